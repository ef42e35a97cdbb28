"""What the fleet takes from the qos component: the plan to send (controller), how to apply it (agent).

The plan travels as ``qos.serial.plan_to_json`` (opaque to MQTT). The agent
validates it with ``plan_from_json`` and applies it with the qos Linux backend
when one is available and ``--enforce`` allows; otherwise it records the plan
(ack result ``recorded``), so a fleet without enforcement still converges
visibly. Everything qos-specific is looked up at call time, so MQTT works with
whatever the qos component provides.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from ...errors import EnforcementError, NocpolicyError

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
    return _stable(out)


def _stable(out: dict) -> dict:
    """Drop fields that change on every call (remaining time, now) so a plan's digest is stable."""
    volatile = {"now", "remaining", "remaining_seconds", "checked_at", "elapsed", "elapsed_seconds"}
    if isinstance(out, dict):
        return {k: _stable(v) for k, v in out.items() if k not in volatile}
    return out


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
        from ...qos.serial import plan_to_json
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
                from ...qos.serial import plan_from_json
            except ImportError:
                return "recorded", self.why
            try:
                plan_from_json(enf)
            except EnforcementError as exc:
                return "failed", str(exc)
        return "recorded", self.why


class LinuxApplier:
    """Apply the plan's enforcement part with the qos Linux backend."""

    def __init__(self, backend):
        self.backend = backend

    async def apply(self, plan: dict) -> tuple[str, str]:
        from ...qos.serial import plan_from_json
        enf = plan.get("enforcement")
        if enf is None:
            return "recorded", "plan carries no enforcement part"
        try:
            qplan = plan_from_json(enf)
            if inspect.iscoroutinefunction(self.backend.apply):
                res = await self.backend.apply(qplan)
            else:   # nft/tc subprocesses: off the event loop
                res = await asyncio.to_thread(self.backend.apply, qplan)
        except EnforcementError as exc:
            return "failed", str(exc)
        return "applied", f"applied with the Linux backend{': ' + str(res) if isinstance(res, str) else ''}"


def make_applier(ctx):
    """LinuxApplier when qos offers a backend and --enforce allows it, else RecordingApplier."""
    if ctx.options.enforce == "off":
        return RecordingApplier("recorded: --enforce off")
    qos = ctx.components.get("qos")
    backend = getattr(qos, "backend", None)
    if backend is None:
        try:
            from ...qos import linux  # present once the qos backend lands
        except ImportError:
            return RecordingApplier("recorded: no enforcement backend on this node")
        factory = getattr(linux, "LinuxBackend", None)
        if factory is None:
            return RecordingApplier("recorded: no enforcement backend on this node")
        try:
            backend = factory()
        except Exception as exc:
            return RecordingApplier(f"recorded: Linux backend unavailable ({exc})")
    return LinuxApplier(backend)
