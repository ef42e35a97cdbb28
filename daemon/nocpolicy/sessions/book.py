"""The session book: turns start/update/stop events into live-table changes and the
store writes that record them. Pure (no I/O); the component commits the writes.

Idempotent by design, so a repeated request never makes a second record:
a Start for a session already open only refreshes it; an Update or Stop for a
session never started opens one (counted as ``no_start``), a Stop for a
session closed recently is a duplicate and changes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Callable

from ..subscribers.live import parse_addrs
from .model import Event, Live, Ops, net_host, net_key, net_text
from .table import LiveTable

log = logging.getLogger(__name__)

RECENTLY_CLOSED = 200_000         # remembered (nas, sid) of closed sessions, for duplicate Stops

Resolver = Callable[[str | None], tuple[str | None, bool]]   # extracted id -> (customer, implicit)


def _known_ids(extracted: str | None) -> tuple[str | None, bool]:
    return extracted, extracted is not None


def _addrs_text(addrs) -> str:
    """The ``addrs`` column: ``family:network:length`` each (one IPv4 address: the usual case)."""
    if len(addrs) == 1:
        fam, v, p = addrs[0]
        return f"{fam}:{v}:{p}"
    return " ".join([f"{fam}:{v}:{p}" for fam, v, p in addrs])


class Book:
    def __init__(self, table: LiveTable, *, next_id: int = 1, max_active: int = 2_000_000):
        self.table = table
        self.next_id = next_id
        self.max_active = max_active
        self.resolve: Resolver = _known_ids
        self.closed: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.counts: Counter = Counter()     # no_start, duplicate_stop, stale, unattributed, full, displaced
        self.on_change: Callable[[Live | None, Live | None], None] = lambda old, new: None
        # the static owner of an address (policy prefixes): a session inside another customer's
        # static prefix is a conflict, which the static prefix wins
        self.static: Callable[[str], str | None] = lambda host: None
        self.static_net: Callable[[int, int], str | None] | None = None    # the same, without text

    def apply(self, ev: Event, ops: Ops | None = None) -> Ops:
        """The store writes ``ev`` needs, appended to ``ops`` (the group commit's batch: no
        object per request) or to a new :class:`Ops`; returns them."""
        if ops is None:
            ops = Ops()
        if ev.kind == "nas-off":
            for s in self.table.by_nas(ev.info.nas):
                self._close(s, ev.ts, ev.reason or "nas-off", ops)
            return ops
        s = self.table.get(ev.info.nas, ev.info.sid)
        if ev.kind == "stop":
            if s is not None:
                self._close(s, ev.ts, ev.reason or "stop", ops)
            elif (ev.info.nas, ev.info.sid) in self.closed:
                self.counts["duplicate_stop"] += 1
            else:
                self.counts["no_start"] += 1
                s = self._open(ev, ops)
                if s is not None:
                    self._close(s, ev.ts, ev.reason or "stop", ops)
            return ops
        if s is None:
            if ev.kind == "update":
                self.counts["no_start"] += 1
            self._open(ev, ops)
        elif ev.info.addrs and not set(ev.info.addrs) <= set(s.addrs):
            # a new address is a new session record (an update naming fewer attributes is not)
            self._close(s, ev.ts, "address-change", ops)
            self._open(ev, ops)
        else:
            s.last = max(s.last, ev.ts)
            self.table.touch(s)
            ops.touches.append((s.last, s.id))
        return ops

    def _open(self, ev: Event, ops: Ops) -> Live | None:
        i = ev.info
        if len(self.table) >= self.max_active:
            self.counts["full"] += 1
            log.warning("live session table full (%d): session from %s not tracked", self.max_active, i.nas)
            return None
        customer, implicit = self.resolve(i.customer)
        if customer is None:
            self.counts["unattributed"] += 1
        self._check_static(i, customer)
        start = ev.ts - ev.elapsed if ev.elapsed else ev.ts
        nid, addrs = self.next_id, i.addrs if type(i.addrs) is tuple else tuple(i.addrs)
        self.next_id += 1
        if self.closed:
            self.closed.pop((i.nas, i.sid), None)
        # every caller has just looked the key up (or closed the session that had it); the table
        # keeps the fields, not ``s`` (a weak reference per Start cost as much as the insert)
        displaced = self.table.put(nid, i.source, i.nas, i.sid, customer, addrs, start, ev.ts, i.interval,
                                   implicit, new_key=True)[1]
        s = Live.make(nid, i.source, i.nas, i.sid, customer, addrs, start, ev.ts, i.interval, implicit)
        for old in displaced:
            self.counts["displaced"] += 1
            self._record_close(old, ev.ts, "displaced", ops)
            self.on_change(old, None)
        ops.inserts.append((nid, i.source, i.nas, i.sid, customer, int(implicit), i.login, i.calling,
                            i.klass, start, None, ev.ts, i.interval, None, _addrs_text(addrs)))
        for n in addrs:
            ops.addrs.append((nid, net_key(n), n[2], start))
        self.on_change(None, s)
        return s

    def _check_static(self, i, customer: str | None) -> None:
        static_net = self.static_net
        for n in i.addrs:
            owner = static_net(n[0], n[1]) if static_net is not None else self.static(net_host(n))
            if owner is not None and owner != customer:
                self.counts["conflict"] += 1
                log.warning("session %s from %s: %s lies inside a static prefix of customer %s; the static "
                            "prefix wins", i.sid, i.nas, net_text(n), owner)

    def _close(self, s: Live, ts: float, reason: str, ops: Ops) -> None:
        self.table.remove(s)
        self._record_close(s, ts, reason, ops)
        s.last = max(ts, s.start)        # the change listeners see when it ended
        self.on_change(s, None)

    def _record_close(self, s: Live, ts: float, reason: str, ops: Ops) -> None:
        self.closed[(s.nas, s.sid)] = s.id
        while len(self.closed) > RECENTLY_CLOSED:
            self.closed.popitem(last=False)
        ops.closes.append((max(ts, s.start), reason, s.id))

    def stale(self, now: float, grace: dict[str, float]) -> Ops:
        """Close every session not heard of within its interval plus its source's grace."""
        ops = Ops()
        for s in self.table.stale(now, grace):
            self.counts["stale"] += 1
            self._close(s, s.last + s.interval, "stale", ops)
        return ops

    def restore(self, live: list[Live], next_id: int) -> None:
        """Sessions open in the store when the daemon starts."""
        for s in live:
            self.table.add(s)
        self.next_id = max(self.next_id, next_id)

    def restore_rows(self, rows) -> None:
        """Open sessions read from the store (:meth:`History.open_rows`), straight into the
        table's columns: no object per session. A policy customer's id is the policy's own
        string (one copy, not one per session)."""
        put, resolve, shared = self.table.put, self.resolve, {}
        for i, src, nas, sid, cid, addrs, start, last, interval, implicit in rows:
            if cid is not None and not implicit:
                known = resolve(cid)[0]
                cid = known if known == cid else cid
            put(i, shared.setdefault(src, src), shared.setdefault(nas, nas), sid, cid, parse_addrs(addrs),
                start, start if last == start else last, shared.setdefault(interval, interval), bool(implicit))
            if i >= self.next_id:
                self.next_id = i + 1
