"""Fleet state, the pure part: the controller's streams and what an agent holds (no I/O).

Controller: :class:`Streams` keeps, per (kind, scope), the entries last published and turns a
new state of the sources into increments (and, every COMPACT_EVERY increments, a snapshot).

Agent: :class:`Holder` keeps, per (kind, scope), the version and entries it holds; it takes a
parsed message and returns the *effective* changes to apply (a node's own stream overrides
the fleet-wide one for the same key). A version at or below the one held is never applied; an
increment that does not follow the held version waits (bounded) for the one before it or for a
newer snapshot, so the state applied only ever moves forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .statewire import COMPACT_EVERY, FLEET, NODE, RING, StateMsg, StateRefused

MAX_WAITING = RING            # increments waiting for their base, per stream


# -- controller ---------------------------------------------------------------------


@dataclass
class Stream:
    version: int = 0
    entries: dict = field(default_factory=dict)
    seq: int = 0                # increments published this run (the ring slot is seq % RING)
    since_snap: int = 0


@dataclass(frozen=True)
class Out:
    """One message to publish: ``slot`` None = the stream's snapshot."""

    kind: str
    scope: str                  # FLEET or a node name
    version: int
    slot: int | None
    body: dict


class Streams:
    def __init__(self):
        self.streams: dict[tuple[str, str], Stream] = {}

    def version(self, kind: str, scope: str) -> int:
        s = self.streams.get((kind, scope))
        return s.version if s else 0

    def snapshot_all(self, kind: str, by_scope: dict[str, dict], version: int) -> list[Out]:
        """Every stream of ``kind`` replaced by ``by_scope`` and published whole (a start)."""
        out = []
        for scope in set(by_scope) | {s for (k, s) in self.streams if k == kind}:
            st = self.streams.setdefault((kind, scope), Stream())
            st.entries, st.version, st.since_snap = dict(by_scope.get(scope, {})), version, 0
            out.append(Out(kind, scope, version, None, {"entries": st.entries}))
        return out

    def update(self, kind: str, by_scope: dict[str, dict], version: int, scopes=None) -> list[Out]:
        """Increments that take the streams in ``scopes`` (all of ``kind`` and all in ``by_scope`` when
        None) to ``by_scope``; a stream that did not change gets nothing, a new one (a node added to
        the fleet) a snapshot: its agent may hold an older stream of that name."""
        if scopes is None:
            scopes = set(by_scope) | {s for (k, s) in self.streams if k == kind}
        out = []
        for scope in scopes:
            new = by_scope.get(scope, {})
            if (kind, scope) not in self.streams:
                out.append(self._fresh(kind, scope, version, new))
                continue
            st = self.streams[(kind, scope)]
            sets = {k: v for k, v in new.items() if st.entries.get(k, _MISSING) != v}
            dels = sorted(k for k in st.entries if k not in new)
            if sets or dels:
                out += self._increment(kind, scope, st, version, sets, dels)
        return out

    def patch(self, kind: str, items: list[tuple[str, str, Any]], version: int) -> list[Out]:
        """Increments for single keys: ``(key, scope, value)``, value None = the key is gone."""
        grouped: dict[str, tuple[dict, list]] = {}
        fresh = {scope for _, scope, _ in items if (kind, scope) not in self.streams}
        for key, scope, value in items:
            st = self.streams.setdefault((kind, scope), Stream())
            sets, dels = grouped.setdefault(scope, ({}, []))
            if value is None:
                if key in st.entries:
                    dels.append(key)
            elif st.entries.get(key, _MISSING) != value:
                sets[key] = value
        out = []
        for scope, (sets, dels) in grouped.items():
            if scope in fresh:
                out.append(self._fresh(kind, scope, version, sets))
            elif sets or dels:
                out += self._increment(kind, scope, self.streams[(kind, scope)], version, sets, dels)
        return out

    def _fresh(self, kind: str, scope: str, version: int, entries: dict) -> Out:
        st = self.streams[(kind, scope)] = Stream(version, dict(entries))
        return Out(kind, scope, version, None, {"entries": dict(st.entries)})

    def _increment(self, kind, scope, st: Stream, version: int, sets: dict, dels: list) -> list[Out]:
        base, st.version = st.version, version
        st.entries.update(sets)
        for k in dels:
            st.entries.pop(k, None)
        out = [Out(kind, scope, version, st.seq % RING, {"base": base, "set": sets, "del": dels})]
        st.seq += 1
        st.since_snap += 1
        if st.since_snap >= COMPACT_EVERY:
            st.since_snap = 0
            out.append(Out(kind, scope, version, None, {"entries": dict(st.entries)}))
        return out


_MISSING = object()


# -- agent ----------------------------------------------------------------------------


@dataclass
class Held:
    version: int = 0
    entries: dict = field(default_factory=dict)
    waiting: dict[int, StateMsg] = field(default_factory=dict)    # base -> increment


@dataclass(frozen=True)
class Step:
    """What taking one message changed: the stream's new version and the effective changes
    (key -> value, None = back to the policy's value)."""

    kind: str
    scope: str
    version: int
    changes: dict
    versions: tuple = ()        # every version passed through, in order (rising)


class Holder:
    def __init__(self, saved: dict | None = None):
        self.held: dict[tuple[str, str], Held] = {}
        self.dropped = 0        # increments dropped because too many waited for their base
        self._before: dict = {}  # effective values before the message being taken
        for key, d in (saved or {}).items():
            kind, scope = key.split("/", 1)
            self.held[(kind, scope)] = Held(int(d.get("version", 0)), dict(d.get("entries") or {}))

    def saved(self, kind: str, scope: str) -> dict:
        h = self.held.get((kind, scope)) or Held()
        return {"version": h.version, "entries": h.entries}

    def versions(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (kind, scope), h in sorted(self.held.items()):
            out.setdefault(kind, {})[scope] = h.version
        return out

    def effective(self, kind: str) -> dict:
        return {**self._get(kind, FLEET).entries, **self._get(kind, NODE).entries}

    def _get(self, kind: str, scope: str) -> Held:
        h = self.held.get((kind, scope))
        if h is None:
            h = self.held[(kind, scope)] = Held()
        return h

    def _value(self, kind: str, key: str):
        node = self._get(kind, NODE).entries
        return node[key] if key in node else self._get(kind, FLEET).entries.get(key)

    def take(self, msg: StateMsg) -> Step | None:
        """Apply ``msg`` to what is held; the effective changes, None when it waits for its base.

        Raises StateRefused("old") for a version at or below the one held (the caller re-acks an
        equal one: a reconnect delivers the retained messages again)."""
        h = self._get(msg.kind, msg.scope)
        if msg.version <= h.version:
            raise StateRefused("old", f"{msg.kind}/{msg.scope} version {msg.version} is not newer than "
                               f"the version held ({h.version})", msg.kind, msg.version)
        if not msg.snapshot and msg.base != h.version:
            if len(h.waiting) >= MAX_WAITING:
                h.waiting.pop(min(h.waiting))
                self.dropped += 1
            h.waiting[msg.base] = msg
            return None
        touched: set = set()
        passed = [self._one(h, msg, touched)]
        while h.version in h.waiting:
            passed.append(self._one(h, h.waiting.pop(h.version), touched))
        h.waiting = {b: m for b, m in h.waiting.items() if b > h.version}
        return Step(msg.kind, msg.scope, h.version, self._diff(msg.kind, touched), tuple(passed))

    def _one(self, h: Held, msg: StateMsg, touched: set) -> int:
        """Apply one message to the held entries; remember the old effective value of each key."""
        keys = (set(h.entries) | set(msg.entries)) if msg.snapshot else set(msg.entries) | set(msg.deleted)
        node, fleet, before = self._get(msg.kind, NODE).entries, self._get(msg.kind, FLEET).entries, self._before
        for k in keys:                 # (one snapshot may hold 1,000,000 keys: no call per key)
            if k not in before:
                before[k] = node[k] if k in node else fleet.get(k)
        touched |= keys
        if msg.snapshot:
            h.entries = dict(msg.entries)
        else:
            h.entries.update(msg.entries)
            for k in msg.deleted:
                h.entries.pop(k, None)
        h.version = msg.version
        return msg.version

    def _diff(self, kind: str, touched: set) -> dict:
        before, self._before = self._before, {}
        node, fleet = self._get(kind, NODE).entries, self._get(kind, FLEET).entries
        out = {}
        for k in touched:
            now = node[k] if k in node else fleet.get(k)
            if before.get(k) != now:
                out[k] = now
        return out
