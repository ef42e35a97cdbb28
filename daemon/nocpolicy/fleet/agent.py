"""Agent side of the fleet: take the retained plan for this node, apply it, acknowledge it.

Only the newest plan matters: messages that arrive while one is being applied
replace each other in a one-slot mailbox. A plan already applied (same version,
good result) is acknowledged again without re-applying (reconnects deliver the
retained plan again).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from .. import __version__
from .plan import PlanInvalid, ack_document, parse_plan
from .wire import ack_topic, dumps

log = logging.getLogger(__name__)

APPLY_TIMEOUT = 60.0
STORE_KEY = "mqtt.agent.plan"


class Agent:
    def __init__(self, node: str, *, store, clock, applier, publish):
        self.node, self.store, self.clock = node, store, clock
        self.applier, self._publish = applier, publish
        self._latest: bytes | None = None
        self._last_good: bytes | None = None    # the payload of the plan in force
        self._force = False
        self._wake = asyncio.Event()
        self.applied: dict | None = None        # {"version", "result", "detail", "at"}
        self.results: Counter = Counter()       # applies by result

    def offer(self, payload: bytes) -> None:
        if not payload:      # retained plan removed: this node left the fleet; keep the last state
            return
        self._latest = payload
        self._wake.set()

    def reapply(self) -> None:
        """Apply the plan in force again (a local reload re-applied the local policy's rules)."""
        if self._last_good is not None and self._latest is None:
            self._latest, self._force = self._last_good, True
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payload, self._latest = self._latest, None
            if payload is not None:
                await self.handle(payload)

    async def handle(self, payload: bytes) -> dict:
        now = self.clock.now().isoformat()
        try:
            plan = parse_plan(payload, self.node)
        except PlanInvalid as exc:
            log.error("fleet: refusing plan: %s", exc)
            self.results["failed"] += 1
            return await self._ack(exc.version, "failed", f"invalid plan: {exc}", now)
        version = plan["version"]
        force, self._force = self._force, False
        if (not force and self.applied and self.applied["version"] == version
                and self.applied["result"] != "failed"):
            return await self._ack(version, self.applied["result"], self.applied["detail"], now)
        try:
            result, detail = await asyncio.wait_for(self.applier.apply(plan), APPLY_TIMEOUT)
        except TimeoutError:
            result, detail = "failed", f"applying took longer than {APPLY_TIMEOUT:.0f}s"
        except Exception as exc:          # any backend failure is reported, never fatal
            log.exception("fleet: applying plan %s failed", version)
            result, detail = "failed", str(exc) or type(exc).__name__
        self.results[result] += 1
        if result != "failed":
            self._last_good = payload
        if force and result != "failed":
            log.info("fleet: plan %s applied again after a local reload", version)
            return self.applied
        before = self.applied
        self.applied = {"version": version, "result": result, "detail": detail, "at": now,
                        "controller": plan.get("controller")}
        self.store.put(STORE_KEY, self.applied)
        self.store.audit(f"mqtt:{plan.get('controller') or 'controller'}", "fleet.plan.apply",
                         f"node:{self.node}", {"version": before["version"]} if before else None,
                         {"version": version, "result": result, "detail": detail})
        log.info("fleet: plan %s %s: %s", version, result, detail)
        return await self._ack(version, result, detail, now)

    async def _ack(self, version, result: str, detail: str, now: str) -> dict:
        doc = ack_document(self.node, version, result, detail, at=now, daemon=__version__)
        await self._publish(ack_topic(self.node), dumps(doc), retain=True)
        return doc
