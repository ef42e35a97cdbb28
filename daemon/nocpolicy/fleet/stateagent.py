"""Agent side of fleet state: take the streams for this node, apply them locally, acknowledge.

Each message is checked whole before anything changes (validate-then-apply): too large,
not JSON, for another node, not valid for its kind, or older than the version held -> refused,
counted (``nocpolicy_fleet_state_refused_total{reason}``), logged, and what is held stays.
Accepted changes go through the area that owns the state (subscribers for decisions, the DNS
guard for list entries), so the DNS guard, passive detection and the DNS workers follow.
What is held (versions and entries per stream) is kept in the state store: a restarted agent
never goes back to an older version. After each burst of messages the agent publishes,
retained, the versions it holds (``nodes/<node>/state/ack``).
A snapshot in parts is collected by ``statesplit.Assembler`` and checked and applied only
whole; parts that never all arrive are refused ``incomplete`` after ``control.state_part_wait``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from .. import __version__
from .statesplit import Assembler
from .statesync import Holder
from .statewire import StateRefused, parse_state, state_ack_topic
from .wire import dumps

log = logging.getLogger(__name__)

STORE_KEY = "mqtt.agent.state"
QUEUE = 65536                 # state messages waiting to be applied; beyond: dropped, counted
DEFAULT_PART_WAIT = 60.0      # seconds the parts of one split snapshot may take to arrive


class StateAgent:
    def __init__(self, node: str, *, kinds: dict, store, clock, publish, part_wait=lambda: DEFAULT_PART_WAIT):
        self.node, self.kinds, self.store, self.clock = node, kinds, store, clock
        self._publish, self._part_wait = publish, part_wait
        self.assembler = Assembler()            # split snapshots being collected
        saved = store.get(STORE_KEY) or {}
        self.holder = Holder({k: store.get(f"{STORE_KEY}.{k}") or {} for k in saved.get("streams", [])})
        self.controller: str | None = saved.get("controller")
        self.refused: Counter = Counter()       # reason -> count
        self.applied: Counter = Counter()       # kind -> versions applied
        self.replayed = 0                       # retained messages at or below what is held
        self.last: dict[str, dict] = {}         # kind -> {"version", "result", "detail", "at"}
        self.history: list[tuple[str, str, int]] = []   # (kind, scope, version) applied, last 1,000
        self._queue: asyncio.Queue = asyncio.Queue(QUEUE)

    def offer(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return                    # a retained message cleared (a stale part of a larger snapshot)
        try:
            self._queue.put_nowait((topic, payload, retained))
        except asyncio.QueueFull:
            self.refused["overflow"] += 1

    async def run(self) -> None:
        while True:
            wait = max(1.0, self._part_wait())
            try:
                item = await asyncio.wait_for(self._queue.get(), wait / 4 if self.assembler.open else None)
            except TimeoutError:
                item = None
            late = self.assembler.sweep(self.clock.monotonic(), wait)
            for why in late:
                self._refuse("incomplete", why.split("/", 1)[0], why)
            if item is not None:
                await self.handle(*item)
            if self._queue.empty() and (item is not None or late):
                await self.ack()

    async def handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        try:
            msg = parse_state(topic, payload, self.node, self.kinds)
            if msg.parts:
                msg = self._assemble(topic, msg, retained)
                if msg is None:
                    return None          # more parts to come (or an old part)
            self.kinds[msg.kind].check(msg.entries)
        except StateRefused as exc:
            return self._refuse(exc.reason, exc.kind, str(exc))
        except ValueError as exc:
            return self._refuse("invalid", msg.kind, f"{topic}: version {msg.version}: {exc}")
        try:
            step = self.holder.take(msg)
        except StateRefused as exc:
            return self._old(topic, msg, retained, exc)
        if msg.snapshot:
            self.assembler.drop_through(msg.stream, msg.version)
        if step is None:
            return None                  # waits for the increment before it
        self.controller = msg.controller or self.controller
        await self._apply(step)

    def _old(self, topic: str, msg, retained: bool, exc: StateRefused) -> None:
        held = self.holder.held.get(msg.stream)
        if retained or (held is not None and msg.version == held.version):
            self.replayed += 1           # a reconnect delivers retained snapshots and increments again
            return None
        return self._refuse(exc.reason, exc.kind, f"{topic}: {exc}")

    def _assemble(self, topic: str, msg, retained: bool):
        """The head or a part of a split snapshot -> the whole snapshot once every part is in, else
        None; parts at or below the version held are old (replayed when retained)."""
        held = self.holder.held.get(msg.stream)
        if held is not None and msg.version <= held.version:
            exc = StateRefused("old", f"{msg.kind}/{msg.scope} version {msg.version} is not newer than the "
                               f"version held ({held.version})", msg.kind, msg.version)
            return self._old(topic, msg, retained, exc)
        whole, abandoned = self.assembler.take(msg, self.clock.monotonic())
        for why in abandoned:
            self._refuse("incomplete", msg.kind, why)
        if whole is not None:
            log.info("fleet state: %s/%s version %d: %d entries assembled from %d parts", msg.kind, msg.scope,
                     whole.version, len(whole.entries), msg.parts)
        return whole

    async def _apply(self, step) -> None:
        kind, actor = step.kind, f"mqtt:{self.controller or 'controller'}"
        now = self.clock.now().isoformat()
        try:
            if step.changes:
                await self.kinds[kind].apply(step.changes, actor=actor,
                                             note=f"fleet {kind} version {step.version}")
            result, detail = "applied", f"{len(step.changes)} change(s)"
        except Exception as exc:      # the store or a worker failed: report, retry from the next snapshot
            log.exception("fleet state: applying %s version %d failed", kind, step.version)
            result, detail = "failed", str(exc) or type(exc).__name__
            self.holder.held[(kind, step.scope)].version = 0
        self.applied[kind] += 1
        self.last[kind] = {"version": step.version, "scope": step.scope, "result": result, "detail": detail,
                           "at": now}
        self.history = (self.history + [(kind, step.scope, v) for v in step.versions])[-1000:]
        await asyncio.to_thread(self._save, kind, step.scope)
        self.store.audit(actor, "fleet.state.apply", f"node:{self.node}", None,
                         {"kind": kind, "scope": step.scope, "version": step.version,
                          "versions": list(step.versions)[-20:], "changes": len(step.changes), "result": result})
        log.info("fleet state: %s/%s version %d %s (%s)", kind, step.scope, step.version, result, detail)

    def _save(self, kind: str, scope: str) -> None:
        streams = sorted({f"{k}/{s}" for (k, s) in self.holder.held})
        self.store.put(f"{STORE_KEY}.{kind}/{scope}", self.holder.saved(kind, scope))
        self.store.put(STORE_KEY, {"streams": streams, "controller": self.controller})

    def _refuse(self, reason: str, kind: str, message: str) -> None:
        self.refused[reason] += 1
        log.warning("fleet state refused (%s): %s", reason, message[:500])
        if kind:
            self.last[kind] = {**self.last.get(kind, {}), "refused": reason, "refused_detail": message[:300]}

    async def ack(self) -> dict:
        doc = {"node": self.node, "at": self.clock.now().isoformat(), "daemon": __version__,
               "held": self.holder.versions(), "last": self.last, "refused": dict(self.refused)}
        await self._publish(state_ack_topic(self.node), dumps(doc), retain=True)
        return doc

    def refusal(self, what: str) -> str:
        """The answer to a command for state the controller owns."""
        ctl = f"the fleet controller {self.controller}" if self.controller else "the fleet controller"
        return (f"{what} are decided at {ctl}, not on agent {self.node}: run the command there "
                f"(nocpolicyctl on the controller, or MQTT); it reaches this node within seconds")

    def status(self) -> dict:
        return {"controller": self.controller, "held": self.holder.versions(), "last": self.last,
                "refused": dict(self.refused), "replayed": self.replayed, "waiting_dropped": self.holder.dropped,
                "assembling": self.assembler.status()}
