"""What one component needs of another, as small typed Protocols (wired in ``app.wire``).

Components do not look each other up by name or probe with ``hasattr``: each
consumer declares here the few members it uses, and ``app.wire`` hands it the
provider (or None when the daemon runs without it). Providers satisfy these
structurally; this module imports nothing from the areas, so any layer may use it.

================  ==============================  =====================================
Protocol          provider                        consumer
================  ==============================  =====================================
NoticePublisher   fleet.component.MqttBridge      maintenance (notices to mqtt_topic)
FleetQos          qos.component.Enforcer          fleet (controller plan, agent apply)
================  ==============================  =====================================

Plus one plain callback: the bridge calls what it was given with ``on_connected``
(maintenance's ``mqtt_connected``) when its broker link comes (back) up.
"""

from __future__ import annotations

from typing import Any, Protocol


class NoticePublisher(Protocol):
    """Publishes a maintenance notice to a contact's MQTT topic (QoS 1, not retained)."""

    @property
    def connected(self) -> bool:
        """The broker link is up now (a publish may still fail)."""
        ...

    async def publish_notice(self, topic: str, payload: bytes) -> tuple[bool, str]:
        """(True, "") once the broker acknowledged it (PUBACK), else (False, why)."""
        ...


class FleetQos(Protocol):
    """What the fleet takes from qos: the plan to send (controller), how to apply one (agent).

    ``plan`` is the ``qos.plan.Plan`` the kernel holds (None before the first one);
    ``backend`` is None when this node is plan-only, ``plan_only_reason`` says why.
    """

    plan: Any
    backend: Any
    plan_only_reason: str

    def active_emergency(self) -> dict | None:
        """The declared emergency (as ``emergency.status`` shows it), or None."""
        ...

    async def adopt_plan(self, plan: Any) -> dict:
        """Apply a plan decided elsewhere and hold it as current (the apply's result)."""
        ...
