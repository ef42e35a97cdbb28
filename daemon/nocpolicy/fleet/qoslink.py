"""What the fleet takes from the qos component: the plan to send (controller), how to apply it (agent).

The qos component arrives as an ``interfaces.FleetQos`` (or None when the daemon
runs without one), handed to the bridge in app.py. The plan travels as
``qos.serial.plan_to_json`` (opaque to MQTT). The agent validates it with
``plan_from_json`` and applies it with the qos Linux backend when one is
available and ``--enforce`` allows; otherwise it records the plan (ack result
``recorded``), so a fleet without enforcement still converges visibly.
"""

from __future__ import annotations

import logging

from ..errors import EnforcementError, NocpolicyError
from ..interfaces import FleetQos
from ..qos.serial import plan_from_json, plan_to_json

log = logging.getLogger(__name__)


def emergency_state(qos: FleetQos | None) -> dict | None:
    """The controller's declared emergency (as ``emergency.status`` shows it), or None without qos."""
    if qos is None:
        return None
    try:
        return qos.active_emergency()
    except NocpolicyError as exc:
        log.warning("fleet: emergency state unavailable: %s", exc)
        return None


def enforcement_plan(qos: FleetQos | None) -> dict | None:
    """The qos plan in force at the controller as JSON, or None when qos has none to offer."""
    plan = qos.plan if qos is not None else None
    if plan is None:
        return None
    try:
        return plan_to_json(plan)
    except Exception as exc:
        log.warning("fleet: qos plan cannot be serialised: %s", exc)
        return None


class RecordingApplier:
    """No enforcement here: validate what can be validated, remember, say so."""

    def __init__(self, why: str):
        self.why = why

    async def apply(self, plan: dict) -> tuple[str, str]:
        enf = plan.get("enforcement")
        if enf is not None:
            try:
                plan_from_json(enf)
            except EnforcementError as exc:
                return "failed", str(exc)
        return "recorded", self.why


class LinuxApplier:
    """Apply the plan's enforcement part with this node's qos Linux backend.

    Goes through ``Enforcer.adopt_plan``: no interleaving with the component's own
    applies, errors counted in its metrics, and its usage counters and status
    describe the fleet plan.
    """

    def __init__(self, qos: FleetQos):
        self.qos = qos

    async def apply(self, plan: dict) -> tuple[str, str]:
        enf = plan.get("enforcement")
        if enf is None:
            return "recorded", "plan carries no enforcement part (the controller has no qos plan)"
        try:
            res = await self.qos.adopt_plan(plan_from_json(enf))
        except EnforcementError as exc:
            return "failed", str(exc)
        steps = "; ".join(res.get("steps") or [])
        return "applied", f"enforced with the Linux backend{': ' + steps if steps else ''}"


def make_applier(enforce: str, qos: FleetQos | None):
    """LinuxApplier when qos has a backend here and --enforce allows it, else RecordingApplier."""
    if enforce == "off":
        return RecordingApplier("recorded: --enforce off")
    if qos is None or qos.backend is None:
        why = (qos.plan_only_reason if qos is not None else "") or "no enforcement backend on this node"
        return RecordingApplier(f"recorded: {why}")
    return LinuxApplier(qos)
