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


class LetterPost(Protocol):
    """The one notice outbox as another area (suspension letters) uses it: its channel joins
    the same loop, and sends through the SMTP settings the outbox's owner holds."""

    def add_letter_channel(self, channel: Any) -> None:
        """Add ``channel`` (a notices.outbox.Channel) to the outbox loop."""
        ...

    def letter_mailer(self) -> Any:
        """The configured Mailer, or None (rows wait)."""
        ...

    def poke_notices(self) -> None:
        """New rows: look now."""
        ...
