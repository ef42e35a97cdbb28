"""What one component needs of another, as small typed Protocols (wired in ``app.wire``).

Components do not look each other up by name or probe with ``hasattr``: the
consumer declares the few members it uses, and ``app.wire`` hands it the
provider (or None when the daemon runs without it). Providers satisfy these
structurally; this module imports nothing from the areas, so any layer may use it.

==================  ==========================  ==============================  ==========================
Protocol            defined in                  provider                        consumer
==================  ==========================  ==============================  ==========================
FleetQos            here                        qos.component.Enforcer          fleet (plan, agent apply)
NoticePublisher     notices/publisher.py        fleet.component.MqttBridge      maintenance (mqtt_topic)
NoticeLinkListener  notices/publisher.py        maintenance.Maintenance         fleet (link back up)
LetterPost          notices/publisher.py        maintenance.Maintenance         suspension (letters)
SuspensionEnforcer  here                        qos.component.Enforcer          suspension (nft garden)
==================  ==========================  ==============================  ==========================
"""

from __future__ import annotations

from typing import Any, Protocol


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


class SuspensionEnforcer(Protocol):
    """What suspensions take from qos: put the suspensions of the subscriber view into nftables
    (walled garden, block) and say whether that worked."""

    async def enforce_suspensions(self) -> dict:
        """``{"enforced": bool, ...}``; never raises for a kernel refusal (logged, old rules kept)."""
        ...
