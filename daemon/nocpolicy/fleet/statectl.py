"""Controller side of fleet state: publish every kind's streams, versioned and retained; track acks.

Changes arrive from the kinds' adapters (``fleet.kinds``) as marks; the loop coalesces the marks
of each kind, computes the increments with the pure :class:`statesync.Streams` and publishes
them. On every (re)connect every stream is published whole at a new version, so the broker's
retained state is the controller's even after a broker or controller restart. The version
counter of each kind is kept in the state store: versions keep rising across restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging

from .statesplit import split
from .statesync import Out, Streams
from .statetrack import StateTracker
from .statewire import FLEET, RING, head, state_ack_topic, stream_topics
from .wire import dumps, node_of

log = logging.getLogger(__name__)

STORE_KEY = "mqtt.fleet.state"
NODES_KEY = "mqtt.fleet.state.nodes"     # the fleet as last published for (to clear removed nodes' streams)
PARTS_KEY = "mqtt.fleet.state.parts"     # stream -> parts of its last retained snapshot (to clear stale ones)
DEFAULT_PART_SIZE = 8 << 20
PRUNE_BATCH = 500             # retained clears of removed nodes in flight at once
PRUNE_RETRY = 5.0             # seconds before clearing again after a clear the broker did not acknowledge
MAX_MARKED = 100_000          # keys marked for one kind before falling back to a full recompute


class StatePublisher:
    def __init__(self, node: str, *, kinds: dict, store, clock, publish, members,
                 part_size=lambda: DEFAULT_PART_SIZE):
        """``members()`` names the fleet (control.groups); ``publish(topic, payload, retain=)``;
        ``part_size()``: a snapshot larger than this goes in parts (control.state_part_size)."""
        self.node, self.kinds, self.store, self.clock = node, kinds, store, clock
        self._publish, self._members, self._part_size = publish, members, part_size
        self.parts: dict[str, int] = dict(store.get(PARTS_KEY) or {})
        self.known: set[str] = set((store.get(NODES_KEY) or {}).get("nodes", []))
        self.cleared: list[str] = []             # nodes whose streams were last cleared (removed from the fleet)
        self.streams = Streams()
        self.tracker = StateTracker()
        self.versions: dict[str, int] = {k: int(v) for k, v in (store.get(STORE_KEY) or {}).items()}
        self._marks: dict[str, list | None] = {}
        self._whole: set[str] = set()            # kinds to publish whole (a (re)connect)
        self._wake = asyncio.Event()
        self._members_seen: tuple = (None, frozenset())
        self.published = 0

    def attach(self) -> None:
        for name, kind in self.kinds.items():
            kind.on_change(lambda items, name=name: self.mark(name, items))

    def mark(self, kind: str, items) -> None:
        have = self._marks.get(kind, [])
        if items is None or have is None or len(have) + len(items) > MAX_MARKED:
            self._marks[kind] = None
        else:
            self._marks[kind] = have + list(items)
        self._wake.set()

    def republish(self) -> None:
        """Publish every stream whole at a new version (on every (re)connect)."""
        self._whole |= set(self.kinds)
        self._wake.set()

    def members_changed(self) -> None:
        """A reload changed the fleet: clear the streams of nodes no longer in it."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.prune()
            whole, self._whole = self._whole, set()
            marks, self._marks = self._marks, {}
            for kind in self.kinds:
                if kind in whole:
                    await self.publish_kind(kind, whole=True)
                elif kind in marks:
                    await self.publish_kind(kind, items=marks[kind])

    async def prune(self) -> list[str]:
        """Nodes no longer in the fleet (a reload, or while this controller was down): their own
        streams are forgotten and their retained state (snapshot, parts, every increment slot, the
        ack) is cleared from the broker with empty retained messages. The nodes cleared."""
        members = set(self._members())
        gone = sorted((self.known | {s for (_, s) in self.streams.streams if s != FLEET}) - members)
        if not gone:
            if self.known != members:
                self.known = members
                self.store.put(NODES_KEY, {"nodes": sorted(members)})
            return []
        docs = [(state_ack_topic(n), b"") for n in gone]
        for node in gone:
            for kind in self.kinds:
                self.streams.streams.pop((kind, node), None)
                docs += [(stream_topics(kind, node, None, i), b"") for i in range(self.parts.get(f"{kind}/{node}", 0))]
                docs += [(stream_topics(kind, node, slot), b"") for slot in [None, *range(RING)]]
        failed = await self._publish_batches(docs)
        if failed:
            # the broker took some: it is there but slow, so try again soon (away: the reconnect does)
            again = f"in {PRUNE_RETRY:.0f} s, " if failed < len(docs) else ""
            log.warning("fleet state: clearing the state of removed node(s) %s: %d message(s) not published; "
                        "tried again %sat the next change or reconnect", ", ".join(gone), failed, again)
            if again:
                asyncio.get_running_loop().call_later(PRUNE_RETRY, self._wake.set)
            return []
        for key in [f"{kind}/{node}" for node in gone for kind in self.kinds]:
            self.parts.pop(key, None)
        self.known, self.cleared = members, gone
        self.store.put(NODES_KEY, {"nodes": sorted(members)})
        self.store.put(PARTS_KEY, self.parts)
        log.info("fleet state: node(s) %s left the fleet: their state streams cleared (%d retained messages)",
                 ", ".join(gone), len(docs))
        return gone

    async def _publish_batches(self, docs: list[tuple[str, bytes]]) -> int:
        """Publish retained ``docs`` PRUNE_BATCH at a time (thousands at once left the later ones
        waiting out their acknowledgement timeout on a busy machine); the number not published."""
        for i in range(0, len(docs), PRUNE_BATCH):
            results = await asyncio.gather(*(self._publish(t, d, retain=True) for t, d in docs[i:i + PRUNE_BATCH]))
            if not all(results):
                return len(docs) - i - results.count(True)
        return 0

    async def publish_kind(self, kind: str, *, whole: bool = False, items=None) -> int:
        version = self.versions.get(kind, 0) + 1
        members = sorted(self._members())
        if whole or items is None:
            by_scope = await self.kinds[kind].current()
            for scope in [s for s in by_scope if s != FLEET and s not in set(members)]:
                del by_scope[scope]       # customers pinned to a node outside the fleet: no stream for it
            for n in members:
                by_scope.setdefault(n, {})
            outs = (self.streams.snapshot_all(kind, by_scope, version) if whole
                    else self.streams.update(kind, by_scope, version))
        else:
            inside = set(members)
            outs = self.streams.patch(kind, [x for x in items if x[1] == FLEET or x[1] in inside], version)
        if not outs:
            return self.versions.get(kind, 0)
        self.versions[kind] = version
        self.store.put(STORE_KEY, self.versions)
        await self._send(outs, members)
        return version

    async def _send(self, outs: list[Out], members: list[str]) -> None:
        t0 = self.clock.monotonic()
        issued = self.clock.now().isoformat()
        docs = [d for o in outs for d in self._render(o, issued)]
        for o in outs:
            self.tracker.published(o.kind, members if o.scope == FLEET else [o.scope], t0)
        results = await asyncio.gather(*(self._publish(t, d, retain=True) for t, d in docs))
        self.published += results.count(True)
        log.info("fleet state: %s version %d: %d message(s) published in %.0f ms", outs[0].kind,
                 outs[0].version, results.count(True), 1000 * (self.clock.monotonic() - t0))
        if not all(results):
            log.warning("fleet state: %d message(s) not published (broker unreachable); everything is "
                        "published again on reconnect", results.count(False))

    def _render(self, o: Out, issued: str) -> list[tuple[str, bytes]]:
        """The messages of one Out: an increment; a snapshot whole, or in parts when larger than the
        part size (head at .../snap, parts at .../part/<i>); parts of an earlier, larger snapshot of
        the stream are cleared (empty retained messages)."""
        h = head(o.kind, o.scope, o.version, self.node, issued)
        if o.slot is not None:
            return [(stream_topics(o.kind, o.scope, o.slot), dumps({**h, **o.body}))]
        whole, size = dumps({**h, **o.body}), self._part_size()
        entries = o.body["entries"]
        chunks = split(entries, size, len(whole)) if len(whole) > size else [(entries, b"")]
        n = len(chunks) if len(chunks) > 1 else 0
        docs = [(stream_topics(o.kind, o.scope, None, i),      # the part's entries encoded once, by split
                 dumps({**h, "part": i, "parts": n, "count": len(entries)})[:-1] + b',"entries":' + data + b"}")
                for i, (_, data) in enumerate(chunks) if n]
        docs.append((stream_topics(o.kind, o.scope, None),
                     dumps({**h, "parts": n, "count": len(entries)}) if n else whole))
        key = f"{o.kind}/{o.scope}"
        docs += [(stream_topics(o.kind, o.scope, None, i), b"") for i in range(n, self.parts.get(key, 0))]
        if self.parts.get(key, 0) != n:
            self.parts[key] = n
            self.store.put(PARTS_KEY, self.parts)
        if n:
            log.info("fleet state: %s snapshot version %d: %d entries in %d parts of at most %d bytes",
                     key, o.version, len(entries), n, size)
        return docs

    def want(self, node: str, kind: str) -> tuple[int, int]:
        return self.streams.version(kind, FLEET), self.streams.version(kind, node)

    def on_ack(self, topic: str, payload: bytes, *, retained: bool) -> None:
        node = _ack_node(topic)
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if node and isinstance(doc, dict) and node in self._member_set():
            self.tracker.on_ack(node, doc, self.want, self.clock.monotonic(), self.clock.now().isoformat(),
                                fresh=not retained)
            self._catch_up(node)

    def _member_set(self) -> frozenset:
        members = self._members()
        if members is not self._members_seen[0]:       # a new policy: the set once, not at every ack
            self._members_seen = (members, frozenset(members))
        return self._members_seen[1]

    def _catch_up(self, node: str) -> None:
        """A node holds a version this controller never issued (its store was lost or replaced):
        continue above it and publish everything again, so versions keep rising and the agents
        take the controller's state instead of refusing it as old."""
        ahead = {k: max(self.tracker.held(node, k)) for k in self.kinds}
        ahead = {k: v for k, v in ahead.items() if v > self.versions.get(k, 0)}
        if not ahead:
            return
        log.warning("fleet state: node %s holds %s, newer than this controller issued; continuing above "
                    "and publishing everything again", node, ", ".join(f"{k} v{v}" for k, v in ahead.items()))
        self.versions.update(ahead)
        self.store.put(STORE_KEY, self.versions)
        self._whole |= set(ahead)
        self._wake.set()

    def status(self, online) -> dict:
        """Per node and kind: versions wanted and held, state and lag. ``online(node)`` from statuses."""
        now = self.clock.monotonic()
        members = sorted(self._members())
        self.tracker.forget(members)
        rows = [self.tracker.row(n, k, self.want(n, k), online(n), now) for n in members for k in self.kinds]
        counts = {s: sum(1 for r in rows if r["state"] == s) for s in ("converged", "pending", "offline")}
        return {"kinds": {k: {"version": self.versions.get(k, 0)} for k in self.kinds},
                "counts": counts, "rows": rows}


def _ack_node(topic: str) -> str | None:
    p = topic.split("/")
    if len(p) == 6 and p[5] == "ack" and p[4] == "state":
        return node_of("/".join(p[:4] + ["ack"]), "ack")
    return None
