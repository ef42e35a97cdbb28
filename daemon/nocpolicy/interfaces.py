"""What one component needs of another, as small typed Protocols (wired in ``app.wire``).

Components do not look each other up by name or probe with ``hasattr``: the
consumer declares the few members it uses, and ``app.wire`` hands it the
provider (or None when the daemon runs without it). Providers satisfy these
structurally; this module imports nothing from the areas, so any layer may use it.

==================  ==========================  ==============================  ==========================
Protocol            defined in                  provider                        consumer
==================  ==========================  ==============================  ==========================
FleetQos            here                        qos.component.Enforcer          fleet (plan, agent apply)
NoticePublisher     notices/publisher.py        fleet.component.MqttBridge      maintenance, suspension letters
NoticeLinkListener  notices/publisher.py        maintenance, suspension         fleet (link back up)
FleetDecisions      here                        subscribers.Subscribers         fleet (state kinds)
RuntimeLists        here                        dns.component.DnsGuard          fleet (state kind lists)
DetectionSummary    here                        dns.component.DnsGuard          fleet (summaries upward)
FleetSessions       here                        sessions.component.Sessions     fleet (sessions upward)
LetterPost          notices/publisher.py        maintenance.Maintenance         suspension (letters)
ContactListener     notices/publisher.py        suspension.Suspensions          maintenance (contact change)
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

    def on_plan_change(self, fn: Any) -> None:
        """Call ``fn()`` when the plan changed without a reload or emergency (a re-render)."""


class FleetDecisions(Protocol):
    """What the fleet takes from subscribers: the runtime decisions to publish (controller) and how
    to adopt the controller's (agent). ``view`` is the ``SubscriberView`` (``decisions``,
    ``customers``, ``by_id``)."""

    @property
    def view(self) -> Any: ...

    def watch(self, fn: Any) -> None:
        """Call ``fn(view, change)`` now and on every change of the view."""

    async def adopt(self, kind: str, values: dict, *, actor: str, note: str) -> bool:
        """Persist and apply decisions made at the controller (customer -> value, None = withdrawn)."""
        ...


class RuntimeLists(Protocol):
    """What the fleet takes from the DNS guard: runtime list entries (``list.update``)."""

    def runtime_entries(self) -> dict[str, list[str]]:
        """list id -> its runtime entries (reads the store: call it off the loop)."""
        ...

    def watch_runtime_entries(self, fn: Any) -> None:
        """Call ``fn(list_id, added, removed)`` after each change."""

    def has_list(self, list_id: str) -> bool: ...

    async def adopt_entries(self, list_id: str, add: list[str], remove: list[str], *, actor: str,
                            reason: str) -> dict:
        """Persist and apply entries decided at the controller."""
        ...


class DetectionSummary(Protocol):
    """What the fleet takes from the DNS guard for the controller: detection counts."""

    def detection_summary(self, since: Any) -> list[dict]:
        """Rows of counts per list, class, customer (reads the store: call it off the loop)."""
        ...


class FleetSessions(Protocol):
    """What the fleet takes from sessions: starts and stops (agent), recording another node's (controller)."""

    def add_change_listener(self, fn: Any) -> None:
        """Call ``fn(old, new)`` for every session that ended and/or started."""

    def live_sessions(self) -> list: ...

    def apply(self, ev: Any) -> None:
        """Record a session event (a ``sessions.model.Event``)."""
class SuspensionEnforcer(Protocol):
    """What suspensions take from qos: put the suspensions of the subscriber view into nftables
    (walled garden, block) and say whether that worked."""

    async def enforce_suspensions(self) -> dict:
        """``{"enforced": bool, ...}``; never raises for a kernel refusal (logged, old rules kept)."""
        ...
