"""Controller side of the fleet: publish versioned plans, track convergence from acks and statuses.

Plans are recomputed when the emergency state changes or the policy reloads
(events from the bus) and on every (re)connect; the version rises only when the
content changed, and is kept in the state store so it keeps rising across
controller restarts. Acks and statuses are retained, so a restarted controller
sees the fleet as it is.
"""

from __future__ import annotations

import asyncio
import json
import logging

from .fleet import FleetTracker
from .plan import content_digest, plan_document
from .wire import dumps, node_of, plan_topic

log = logging.getLogger(__name__)

STORE_KEY = "mqtt.fleet.plan"


class Controller:
    def __init__(self, node: str, *, store, clock, publish, content, members):
        """``content() -> dict`` (async) builds the plan content (the same for every node: the
        controller's qos plan and emergency); ``members()`` names the fleet."""
        self.node, self.store, self.clock = node, store, clock
        self._publish, self._content, self._members = publish, content, members
        self.tracker = FleetTracker()
        saved = store.get(STORE_KEY) or {}
        self.version: int = int(saved.get("version", 0))
        self.digest: str | None = saved.get("digest")
        self.issued_at: str | None = saved.get("issued_at")
        self._published: set[str] = set()      # nodes whose retained plan we set (this run)
        self._wake = asyncio.Event()
        self._republish = False

    def replan(self, *, republish: bool = False) -> None:
        self._republish = self._republish or republish
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            republish, self._republish = self._republish, False
            await self.publish_plans(republish=republish)

    async def publish_plans(self, *, republish: bool = False) -> int:
        """Recompute every member's plan; publish if the content changed (or ``republish``)."""
        started = self.clock.monotonic()
        members = sorted(self._members())
        self.tracker.set_members(members)
        content = await self._content()
        digest = content_digest({"content": content})
        changed = digest != self.digest
        if changed:
            self.version += 1
            self.digest = digest
            self.issued_at = self.clock.now().isoformat()
            self.store.put(STORE_KEY, {"version": self.version, "digest": digest, "issued_at": self.issued_at})
        elif not republish:
            return self.version
        now = self.clock.monotonic()
        for n in members:
            self.tracker.planned(n, self.version, now)
        docs = [(n, dumps(plan_document(self.version, n, content, controller=self.node,
                                        issued_at=self.issued_at))) for n in members]
        t0 = self.clock.monotonic()
        results = await asyncio.gather(*(self._publish(plan_topic(n), d, retain=True) for n, d in docs))
        log.info("fleet: plan version %d published to %d node(s) in %.0f ms (built in %.0f ms)",
                 self.version, results.count(True), 1000 * (self.clock.monotonic() - t0),
                 1000 * (t0 - started))
        gone = self._published - set(members)
        for n in gone:   # a node that left the fleet: remove its retained plan
            await self._publish(plan_topic(n), b"", retain=True)
        self._published = {n for (n, _), ok in zip(docs, results, strict=True) if ok}
        if not all(results):
            log.warning("fleet: %d plan(s) not published (broker unreachable); retrying on reconnect",
                        results.count(False))
        return self.version

    def on_status(self, topic: str, payload: bytes) -> None:
        node = node_of(topic, "status")
        doc = _json(payload)
        if node and doc is not None:
            self.tracker.on_status(node, doc, self.clock.now().isoformat())

    def on_ack(self, topic: str, payload: bytes, *, retained: bool) -> None:
        node = node_of(topic, "ack")
        doc = _json(payload)
        if node and doc is not None:
            self.tracker.on_ack(node, doc, self.clock.monotonic(), self.clock.now().isoformat(),
                                fresh=not retained)

    def status(self) -> dict:
        now = self.clock.monotonic()
        return {"version": self.version, "issued_at": self.issued_at, "counts": self.tracker.counts(),
                "nodes": self.tracker.snapshot(now)}


def _json(payload: bytes) -> dict | None:
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None
