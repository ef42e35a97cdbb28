"""The two small interfaces between the MQTT notice channel and whatever owns the MQTT link.

app.py wires them: the notice side (the Maintenance component) is handed the link
owner as a ``NoticePublisher`` (``Maintenance.set_notice_publisher``), and the link
owner is handed the notice side as a ``NoticeLinkListener`` and calls
``mqtt_connected`` whenever its link comes (back) up, so notices waiting for the
link are tried at once instead of sitting out their backoff. While the link is
down ``publish_notice`` answers (False, why) and the row keeps its backoff.
"""

from __future__ import annotations

from typing import Any, Protocol


class NoticePublisher(Protocol):
    async def publish_notice(self, topic: str, payload: bytes) -> tuple[bool, str]:
        """Publish QoS 1, not retained; (True, "") once the broker acknowledged it, else (False, why)."""
        ...


class NoticeLinkListener(Protocol):
    def mqtt_connected(self) -> None:
        """The link is (back) up: waiting MQTT notices are due now."""
        ...


class ContactListener(Protocol):
    def contacts_changed(self) -> None:
        """A customer's fault contact has a new version (``contact set`` or a changed policy contact),
        already committed: notices waiting for the old contact follow it."""
        ...


class LetterPost(Protocol):
    """What another area's letters (suspensions) need of the owner of the fault contacts and the
    SMTP settings (the maintenance component): the mailer, and word of contact changes."""

    def letter_mailer(self) -> Any:
        """The configured Mailer, or None (e-mail rows wait)."""
        ...

    def add_contact_listener(self, listener: ContactListener) -> None:
        """Call ``listener.contacts_changed()`` after each new contact version."""
        ...
