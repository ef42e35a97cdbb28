"""What the fleet takes from the qos component: the plan to send (controller), how to apply it (agent).

The plan travels as ``qos.serial.plan_to_json`` (opaque to MQTT). The agent
validates it with ``plan_from_json`` and applies it with the qos Linux backend
when one is available and ``--enforce`` allows; otherwise it records the plan
(ack result ``recorded``), so a fleet without enforcement still converges
visibly. Everything qos-specific is looked up at call time, so MQTT works with
whatever the qos component provides.
"""

from __future__ import annotations

import logging

from ..errors import EnforcementError, NocpolicyError

log = logging.getLogger(__name__)


async def emergency_state(ctx) -> dict | None:
    """The controller's emergency state (``emergency.status``), or None without the command."""
    if ctx.commands is None or "emergency.status" not in ctx.commands.names():
        return None
    try:
        out = await ctx.commands.dispatch("emergency.status", {}, actor="mqtt:fleet", source="internal")
    except NocpolicyError as exc:
        log.warning("fleet: emergency.status failed: %s", exc)
        return None
    # only the declaration itself: timings and history would change the plan digest on every call
    return out.get("active") if isinstance(out, dict) else None


def enforcement_plan(ctx) -> dict | None:
    """The qos plan in force at the controller as JSON, or None when qos has none to offer."""
    qos = ctx.components.get("qos")
    plan = getattr(qos, "plan", None)
    if callable(plan):
        try:
            plan = plan()
        except Exception as exc:  # a qos bug must not stop the fleet
            log.warning("fleet: qos plan unavailable: %s", exc)
            return None
    if plan is None:
        return None
    try:
        from ..qos.serial import plan_to_json
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
                from ..qos.serial import plan_from_json
            except ImportError:
                return "recorded", self.why
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

    def __init__(self, qos):
        self.qos = qos

    async def apply(self, plan: dict) -> tuple[str, str]:
        from ..qos.serial import plan_from_json
        enf = plan.get("enforcement")
        if enf is None:
            return "recorded", "plan carries no enforcement part (the controller has no qos plan)"
        try:
            res = await self.qos.adopt_plan(plan_from_json(enf))
        except EnforcementError as exc:
            return "failed", str(exc)
        steps = "; ".join(res.get("steps") or [])
        return "applied", f"enforced with the Linux backend{': ' + steps if steps else ''}"


def make_applier(ctx):
    """LinuxApplier when qos has a backend here and --enforce allows it, else RecordingApplier."""
    if ctx.options.enforce == "off":
        return RecordingApplier("recorded: --enforce off")
    qos = ctx.components.get("qos")
    if qos is None or getattr(qos, "backend", None) is None:
        why = getattr(qos, "plan_only_reason", "") or "no enforcement backend on this node"
        return RecordingApplier(f"recorded: {why}")
    return LinuxApplier(qos)
