"""The live session table: address -> active session, longest prefix first.

Up to millions of sessions are live at once, so the table keeps them as columns, not
one object each: a session is a *slot*; its id, start, last update, interval, NAS and
source are entries of ``array``s, and so are its addresses in the usual shape (an IPv4
address, then up to two IPv6 prefixes of /64 or shorter: 23 bytes; any other shape is
kept in a small dict) and its session id (up to 24 bytes: :class:`ShortStrings`); its
customer id is an entry of a list (the policy's own string for a policy customer). The indexes are :class:`IntMap`s (two
arrays, no int objects): ``hash((nas, sid)) -> slot`` and, per (family, prefix length),
``network >> shift -> slot`` (a dict only for IPv6 keys wider than 64 bits: /65../128).
About 300 bytes a session with an IPv4 address and a delegated prefix, against ~600 for
one object per session (bench/README.md, third pass).

``get``/``lookup``/``by_nas``/``sessions`` build :class:`Live` value objects on demand;
while a caller still holds the object it added or got, it gets that same object back.
A change of ``last`` goes back with :meth:`touch`. Only one owner (the Sessions
component) changes the table; readers call the lookups.
"""

from __future__ import annotations

import math
import weakref
from array import array
from collections import Counter
from collections.abc import Iterator

from ..subscribers.live import parse_host
from .intmap import IntMap
from .model import Live, Net
from .strcol import ShortStrings

_M64 = (1 << 64) - 1
_IMPLICIT = 0x80               # flag bit; the low 7 bits are the source's code
_NONE = 0xFF                   # prefix length of an absent address column
_LOW64 = (1 << 64) - 1
NESTED_PROBES = 4096           # nested(): most narrower networks probed one by one
GROW_MIN = 1024                # free slots added at least when the columns grow


class LiveTable:
    def __init__(self):
        self.version = 0            # bumped on every change: readers can cache by it
        self.clear()

    def clear(self) -> None:
        """Forget every session (a resync reloads them from the store)."""
        self._ids, self._nas = array("q"), array("I")
        self._start, self._last, self._interval = array("d"), array("d"), array("d")
        self._flags = array("B")
        self._sids = ShortStrings()                # Acct-Session-Id or lease key (ids 0: a free slot)
        self._cust: list[str | None] = []
        # addresses: IPv4 value + length, two IPv6 (high 64 bits + length); _NONE: absent
        self._a4, self._a6, self._b6 = array("I"), array("Q"), array("Q")
        self._p4, self._p6, self._q6 = array("B"), array("B"), array("B")
        self._more: dict[int, tuple[Net, ...]] = {}      # slot -> addresses of another shape
        self._free = array("i")
        self._n = 0
        self._keys = IntMap()                      # hash((nas, sid)) -> slot
        self._collide: dict[tuple[str, str], int] = {}    # the rare second key of one hash
        self._nas_names: list[str] = []
        self._nas_code: dict[str, int] = {}
        self._sources: list[str] = []
        # family -> [(shift, {net >> shift: slot})], longest prefix (smallest shift) first
        self._tables: dict[int, list[tuple[int, IntMap | dict]]] = {4: [], 6: []}
        self._table_of: dict[int, IntMap | dict] = {}      # family << 8 | shift -> its table
        self._held: weakref.WeakValueDictionary[int, Live] = weakref.WeakValueDictionary()
        self._expect = 8
        self._due = math.inf        # no session's last + interval is earlier (a lower bound)
        self.version += 1

    def reserve(self, n: int) -> None:
        """About ``n`` sessions are coming (a restore): size the indexes once."""
        self._expect = max(self._expect, n)
        if n > len(self._ids):
            self._grow_columns(n - len(self._ids))      # exactly: no spare eighth after a restore
        self._keys.reserve(n)
        for tables in self._tables.values():
            for _, d in tables:
                if isinstance(d, IntMap):
                    d.reserve(n)

    def __len__(self) -> int:
        return self._n

    # -- keys -------------------------------------------------------------------------

    def _slot(self, nas: str, sid: str) -> int | None:
        slot = self._keys.get(hash((nas, sid)) & _M64)
        if slot is not None and self._sids[slot] == sid and self._nas_names[self._nas[slot]] == nas:
            return slot
        return self._collide.get((nas, sid)) if self._collide else None

    def _source_code(self, source: str) -> int:
        try:
            return self._sources.index(source)
        except ValueError:
            self._sources.append(source)
            return len(self._sources) - 1

    def _nas_of(self, nas: str) -> int:
        c = self._nas_code.get(nas)
        if c is None:
            c = self._nas_code[nas] = len(self._nas_names)
            self._nas_names.append(nas)
        return c

    # -- reading ----------------------------------------------------------------------

    def _live(self, slot: int) -> Live:
        s = self._held.get(slot)
        if s is not None and s.id == self._ids[slot]:
            return s
        flags = self._flags[slot]
        return Live.make(self._ids[slot], self._sources[flags & 0x7F], self._nas_names[self._nas[slot]],
                         self._sids[slot], self._cust[slot], self._addrs_of(slot), self._start[slot],
                         self._last[slot], self._interval[slot], bool(flags & _IMPLICIT))

    def get(self, nas: str, sid: str) -> Live | None:
        slot = self._slot(nas, sid)
        return self._live(slot) if slot is not None else None

    def _slots(self) -> list[int]:
        return [i for i, x in enumerate(self._ids) if x]

    def by_nas(self, nas: str) -> list[Live]:
        code = self._nas_code.get(nas)
        if code is None:
            return []
        ids = self._ids
        return [self._live(i) for i, c in enumerate(self._nas) if c == code and ids[i]]

    def sessions(self) -> list[Live]:
        """Every live session (a snapshot: the table may change while it is walked)."""
        return [self._live(i) for i in self._slots()]

    def count_by_source(self) -> Counter:
        flags = self._flags
        codes = Counter(flags[i] & 0x7F for i, x in enumerate(self._ids) if x)
        return Counter({self._sources[c]: n for c, n in codes.items()})

    def stale(self, now: float, grace: dict[str, float]) -> list[Live]:
        """The sessions not heard of within their interval plus their source's grace. The
        columns are walked only when the earliest ``last + interval`` says one may be due
        (a million sessions cost a sweep ~0.5 s of CPU)."""
        g = [grace.get(src, 600.0) for src in self._sources]
        if now - min(g, default=600.0) <= self._due:
            return []
        flags, ids, interval = self._flags, self._ids, self._interval
        out, due = [], math.inf
        for i, last in enumerate(self._last):
            if interval[i] and ids[i]:
                if now - last > interval[i] + g[flags[i] & 0x7F]:
                    out.append(self._live(i))
                elif last + interval[i] < due:
                    due = last + interval[i]
        self._due = due
        return out

    def changes(self, op: str) -> Iterator[tuple[str, tuple[Net, ...], str | None, bool]]:
        """``(op, addrs, customer, implicit)`` of every live session, one at a time."""
        for i in self._slots():
            yield op, self._addrs_of(i), self._cust[i], bool(self._flags[i] & _IMPLICIT)

    def has_customer(self, cid: str) -> bool:
        """Does a live session name customer ``cid``? (a scan: for operator commands)"""
        return cid in self._cust

    # -- writing ----------------------------------------------------------------------

    def add(self, s: Live, *, new_key: bool = False, hold: bool = True) -> list[Live]:
        """Add ``s``; returns the sessions it displaced (same key, or same address).
        ``new_key``: the caller knows no live session has its key (it just looked);
        ``hold=False``: the caller keeps no ``s`` of its own to be handed back by ``get``
        (the book: a weak reference per Start costs as much as the rest of the insert)."""
        slot, displaced = self.put(s.id, s.source, s.nas, s.sid, s.customer, s.addrs, s.start, s.last,
                                   s.interval, s.implicit, new_key=new_key)
        if hold:
            self._held[slot] = s
        return displaced

    def put(self, id: int, source: str, nas: str, sid: str, customer: str | None, addrs: tuple[Net, ...],
            start: float, last: float, interval: float, implicit: bool, *,
            new_key: bool = False) -> tuple[int, list[Live]]:
        """Add a session from its fields; returns (its slot, the sessions it displaced)."""
        displaced = []
        if not new_key:
            old = self._slot(nas, sid)
            if old is not None:
                displaced.append(self._live(old))
                self._remove_slot(old)
        slot = self._new_slot(id, source, nas, sid, customer, addrs, start, last, interval, implicit)
        for fam, value, plen in addrs:
            shift = (32 if fam == 4 else 128) - plen
            d = self._table(fam, shift)
            key = value >> shift
            prev = d.add(key, slot) if type(d) is IntMap else d.setdefault(key, slot)
            if prev is not None and prev != slot:
                displaced.append(self._live(prev))
                self._remove_slot(prev)
                d[key] = slot
        self.version += 1
        return slot, displaced

    def _new_slot(self, id, source, nas, sid, customer, addrs, start, last, interval, implicit) -> int:
        sources = self._sources
        flags = (sources.index(source) if source in sources else self._source_code(source)) \
            | (_IMPLICIT if implicit else 0)
        nas_code = self._nas_code.get(nas)
        if nas_code is None:
            nas_code = self._nas_of(nas)
        if not self._free:
            self._grow_columns()
        slot = self._free.pop()
        self._ids[slot], self._nas[slot], self._flags[slot] = id, nas_code, flags
        self._start[slot], self._last[slot], self._interval[slot] = start, last, interval
        self._sids[slot] = sid
        self._cust[slot] = customer
        if len(addrs) == 1 and addrs[0][0] == 4:      # the usual case (a free slot has no address)
            self._a4[slot], self._p4[slot] = addrs[0][1], addrs[0][2]
        else:
            self._set_addrs(slot, addrs)
        if interval and last + interval < self._due:
            self._due = last + interval
        if self._keys.add(hash((nas, sid)) & _M64, slot) is not None:
            self._collide[(nas, sid)] = slot
        self._n += 1
        return slot

    def _grow_columns(self, k: int = 0) -> None:
        """A block of ``k`` free slots at the end of every column (default: an eighth more, at
        least ``GROW_MIN``): a new session then fills its slot by index, as a reused one does,
        where appending to 15 columns one by one was a fifth of an insert."""
        n = len(self._ids)
        k = k or max(GROW_MIN, n >> 3)
        for col in (self._ids, self._nas, self._start, self._last, self._interval, self._flags,
                    self._a4, self._a6, self._b6):
            col.frombytes(bytes(k * col.itemsize))
        for col in (self._p4, self._p6, self._q6):
            col.frombytes(bytes((_NONE,)) * k)
        self._sids.extend(k)
        self._cust += [None] * k
        self._free.extend(range(n + k - 1, n - 1, -1))      # the lowest slot is taken first

    def touch(self, s: Live) -> None:
        """``s.last`` changed: keep it."""
        slot = self._slot(s.nas, s.sid)
        if slot is not None and self._ids[slot] == s.id:
            self._last[slot] = s.last

    def remove(self, s: Live) -> None:
        slot = self._slot(s.nas, s.sid)
        if slot is not None and self._ids[slot] == s.id:
            self._remove_slot(slot)
        self.version += 1

    def _set_addrs(self, slot: int, addrs: tuple[Net, ...]) -> None:
        """Into the columns when ``addrs`` has the usual shape, else into ``_more``."""
        i, n = 0, len(addrs)
        p4 = p6 = q6 = _NONE
        if n and addrs[0][0] == 4:
            self._a4[slot], p4 = addrs[0][1], addrs[0][2]
            i = 1
        for a, p in ((self._a6, 6), (self._b6, 7)):
            if i < n and addrs[i][0] == 6 and addrs[i][2] <= 64 and not addrs[i][1] & _LOW64:
                a[slot] = addrs[i][1] >> 64
                if p == 6:
                    p6 = addrs[i][2]
                else:
                    q6 = addrs[i][2]
                i += 1
        if i < n:
            self._more[slot] = addrs
            p4 = p6 = q6 = _NONE
        self._p4[slot], self._p6[slot], self._q6[slot] = p4, p6, q6

    def _addrs_of(self, slot: int) -> tuple[Net, ...]:
        more = self._more.get(slot) if self._more else None
        if more is not None:
            return more
        out = []
        if self._p4[slot] != _NONE:
            out.append((4, self._a4[slot], self._p4[slot]))
        if self._p6[slot] != _NONE:
            out.append((6, self._a6[slot] << 64, self._p6[slot]))
        if self._q6[slot] != _NONE:
            out.append((6, self._b6[slot] << 64, self._q6[slot]))
        return tuple(out)

    def _remove_slot(self, slot: int) -> None:
        for fam, value, plen in self._addrs_of(slot):
            shift = (32 if fam == 4 else 128) - plen
            d = self._table(fam, shift)
            if d.get(value >> shift) == slot:
                d.pop(value >> shift)
        nas, sid = self._nas_names[self._nas[slot]], self._sids[slot]
        h = hash((nas, sid)) & _M64
        if self._keys.get(h) == slot:
            self._keys.pop(h)
        else:
            self._collide.pop((nas, sid), None)
        self._sids.drop(slot)
        self._cust[slot] = None
        self._ids[slot] = 0
        self._p4[slot] = self._p6[slot] = self._q6[slot] = _NONE
        if self._more:
            self._more.pop(slot, None)
        self._held.pop(slot, None)
        self._free.append(slot)
        self._n -= 1

    def _table(self, fam: int, shift: int) -> IntMap | dict:
        d = self._table_of.get(fam << 8 | shift)
        if d is None:
            d = self._table_of[fam << 8 | shift] = \
                IntMap(self._expect, wide=fam == 6) if fam == 4 or shift >= 64 else {}
            tables = self._tables[fam]
            tables.append((shift, d))
            tables.sort(key=lambda t: t[0])
        return d

    # -- lookups (the DNS guard's, ACLs') ---------------------------------------------

    def _find_slot(self, fam: int, ip: int) -> tuple[int, int] | None:
        for shift, d in self._tables[fam]:
            slot = d.get(ip >> shift)
            if slot is not None:
                return slot, (32 if fam == 4 else 128) - shift
        return None

    def find(self, fam: int, ip: int) -> tuple[Live, int] | None:
        """The session holding ``ip`` and the prefix length that matched, longest first."""
        hit = self._find_slot(fam, ip)
        return (self._live(hit[0]), hit[1]) if hit else None

    def lookup(self, host: str) -> Live | None:
        p = parse_host(host)
        hit = self._find_slot(*p) if p is not None else None
        return self._live(hit[0]) if hit else None

    def customer_of(self, host: str) -> str | None:
        p = parse_host(host)
        hit = self._find_slot(*p) if p is not None else None
        return self._cust[hit[0]] if hit else None

    def contains(self, host: str) -> bool:
        """Is ``host`` inside a live session's address or prefix? (cheap; for ACLs)"""
        p = parse_host(host)
        return p is not None and self._find_slot(*p) is not None

    def nested(self, fam: int, value: int, plen: int, probes: int = NESTED_PROBES) -> bool:
        """Does a live address of another length hold ``value/plen`` or lie inside it? (qos:
        such a change can shadow another session's address). One probe per wider length in use;
        a narrower length is probed address by address when it has at most ``probes`` in
        the prefix, else the answer is True (cannot tell cheaply: the caller must assume so).
        The same network at the same length is one session's (the table displaces the other)."""
        own = (32 if fam == 4 else 128) - plen
        budget = probes
        for shift, d in self._tables[fam]:
            if shift > own:
                if d.get(value >> shift) is not None:
                    return True
            elif shift < own and len(d):
                n = 1 << (own - shift)
                budget -= n
                if budget < 0:
                    return True
                first = value >> shift
                if any(d.get(k) is not None for k in range(first, first + n)):
                    return True
        return False

    def addresses(self) -> list[tuple[Net, str]]:
        """Every live address with its customer (attributed sessions only; subscribers.live.LiveAddresses)."""
        cust = self._cust
        return [(n, cust[i]) for i in self._slots() if cust[i] for n in self._addrs_of(i)]

    def items(self) -> list[tuple[Net, Live]]:
        return [(n, s) for s in self.sessions() for n in s.addrs]

