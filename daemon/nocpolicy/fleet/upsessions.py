"""Sessions flow upward: an agent's session starts and stops reach the controller's session history.

Agent: every start and stop its sessions area records becomes an event in a bounded outbox
(100,000; the oldest dropped and counted), published in batches of at most 500 to
``nodes/<node>/up/sessions`` (QoS 1, not retained) and removed only once the broker
acknowledged them (at least once). On every (re)connect the agent first sends a start for
every live session: the controller catches up on whatever a crash or an overflow lost. A
stop is not live any more, so the stops still queued are kept in the agent's store (at most
KEPT, written at most once a second while any wait, and at a clean stop): a stop queued while the
broker was away survives a restart of the agent too.

Controller: each event becomes a sessions ``Event`` keyed ``<node>:<nas>`` + session id and is
recorded by its own sessions area, whose session-key rules make repeats idempotent (a second
start only refreshes, a second stop is counted as a duplicate). ``whois`` at the controller
then answers for the whole fleet. Only what ``whois`` needs travels: source, NAS, session id,
customer, addresses, times -- no login, calling station or class.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..clock import monotonic
from ..sessions.model import Event, SessionInfo, net_of, net_text
from .upward import node_document
from .wire import ROOT, dumps

log = logging.getLogger(__name__)

OUTBOX = 100_000
BATCH = 500
MAX_BYTES = 1 << 20
UP_SESSIONS_FILTER = f"{ROOT}/nodes/+/up/sessions"
STORE_KEY = "mqtt.agent.up.sessions"
KEPT = 20_000                 # stops kept in the store across a restart (the newest)
SAVE_EVERY = 1.0              # seconds between two writes of the kept stops


def up_sessions_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/up/sessions"


def event_of(op: str, live) -> dict:
    """An upward event from a live session (sessions.model.Live): ``ts`` is when it was last heard
    of, for a stop when it ended."""
    return {"op": op, "source": live.source, "nas": live.nas, "sid": live.sid, "customer": live.customer,
            "addrs": [net_text(n) for n in live.addrs], "start": live.start, "ts": live.last}


class SessionsUp:
    """Agent: the outbox of session events for the controller."""

    def __init__(self, node: str, *, publish, connected, live=None, store=None):
        """``connected()``: is the broker link up; ``live()``: the live sessions (for a resync);
        ``store``: where the queued stops are kept across a restart."""
        self.node, self._publish, self._connected, self.live = node, publish, connected, live
        self.store = store
        self.queue: deque = deque()
        self.dropped = 0
        self.sent = 0
        self.kept = 0                      # stops in the store now
        self._restored = list(((store.get(STORE_KEY) if store else None) or {}).get("stops", []))[-KEPT:]
        self.kept = len(self._restored)
        self._saved_at = 0.0
        self._wake = asyncio.Event()

    def changed(self, old, new) -> None:
        """sessions' change hook: a session ended (old) and/or started (new)."""
        if old is not None and (new is None or (old.nas, old.sid) != (new.nas, new.sid)):
            self._put(event_of("stop", old))
        if new is not None:
            self._put(event_of("start", new))
        self._wake.set()

    def resync(self) -> None:
        """On (re)connect: a start for every live session, ahead of what is queued (and, the first
        time, the stops kept from before a restart, but none of a session that is live again)."""
        live = list(self.live())[:OUTBOX] if self.live is not None else []
        if self._restored:
            now = {(x.nas, x.sid) for x in live}
            for ev in reversed([e for e in self._restored if (e.get("nas"), e.get("sid")) not in now]):
                self.queue.appendleft(ev)
            self._restored = []
        if self.live is not None:
            for s in reversed(live):
                self.queue.appendleft(event_of("start", s))
            while len(self.queue) > OUTBOX:
                self.queue.pop()
                self.dropped += 1
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ok = self._connected() and await self.flush()
            await self._keep()
            if self._connected() and not ok:
                await asyncio.sleep(0.5)       # not acknowledged: try again (the link reconnects)
                self._wake.set()

    async def _keep(self) -> None:
        """Keep the queued stops in the store (at most once every SAVE_EVERY seconds)."""
        if self.store is None or (not self.kept and not any(e["op"] == "stop" for e in self.queue)):
            return
        wait = self._saved_at + SAVE_EVERY - monotonic()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._wake.set)
            return
        self._saved_at = monotonic()
        await asyncio.to_thread(self.save)

    def save(self) -> None:
        """Write the queued stops (and those restored but not yet resent) to the store now."""
        if self.store is None:
            return
        stops = (self._restored + [e for e in list(self.queue) if e["op"] == "stop"])[-KEPT:]
        if stops or self.kept:
            self.store.put(STORE_KEY, {"stops": stops})
            self.kept = len(stops)

    def _put(self, ev: dict) -> None:
        if len(self.queue) >= OUTBOX:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(ev)

    async def flush(self) -> bool:
        """Publish what is queued, batch by batch; False when the broker did not acknowledge."""
        while self.queue:
            batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            doc = {"node": self.node, "events": batch}
            if not await self._publish(up_sessions_topic(self.node), dumps(doc), retain=False):
                return False
            for _ in batch:
                self.queue.popleft()
            self.sent += len(batch)
        return True


class SessionsIn:
    """Controller: upward session events recorded by its own sessions area (``sink.apply``)."""

    def __init__(self, sink, members):
        self.sink, self._members = sink, members
        self.refused = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            node, events = parse_sessions(topic, payload)
        except (ValueError, UnicodeDecodeError) as exc:
            self.refused += 1
            log.warning("fleet sessions refused: %s", str(exc)[:300])
            return
        if node not in set(self._members()):
            self.refused += 1
            log.warning("fleet sessions refused: %s is not a fleet node", node)
            return
        for ev in events:
            self.sink.apply(ev)


def parse_sessions(topic: str, payload: bytes) -> tuple[str, list[Event]]:
    """(node, events) of an upward sessions message, or ValueError naming what is wrong."""
    node, doc = node_document(topic, payload, "events", MAX_BYTES)
    out = []
    for i, e in enumerate(doc["events"][:BATCH]):
        try:
            out.append(_event(node, e))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{topic}: events[{i}]: {exc}") from None
    return node, out


def _event(node: str, e: dict) -> Event:
    if e["op"] not in ("start", "stop"):
        raise ValueError(f"op must be start or stop, not {e['op']!r}")
    customer = e.get("customer")
    if customer is not None and not isinstance(customer, str):
        raise ValueError("customer must be a string or null")
    addrs = tuple(net_of(a) for a in e["addrs"][:16])
    info = SessionInfo(source=str(e["source"])[:16], nas=f"{node}:{str(e['nas'])[:200]}", sid=str(e["sid"])[:253],
                       customer=customer, addrs=addrs, interval=0.0)
    ts, start = float(e["ts"]), float(e["start"])
    if e["op"] == "start":
        return Event("start", info, ts, elapsed=max(0.0, ts - start))
    return Event("stop", info, ts, reason="stop (agent)")
