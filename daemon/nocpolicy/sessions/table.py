"""The live session table: address -> active session, longest prefix first.

One dict per (family, prefix length) keyed by the network as an integer, like
the DNS guard's static PrefixIndex, but mutable: a Start adds, a Stop removes.
``lookup``/``contains`` take an address string and cost a handful of dict probes.
Only one owner (the Sessions component) changes it; readers call the lookups.
"""

from __future__ import annotations

from ..subscribers.live import parse_host
from .model import Live, Net


class LiveTable:
    def __init__(self):
        # nas -> {session id: Live}: no (nas, sid) tuple per session (~1M are live)
        self._by_nas: dict[str, dict[str, Live]] = {}
        self._n = 0
        # family -> [(shift, {net >> shift: Live})], longest prefix (smallest shift) first
        self._tables: dict[int, list[tuple[int, dict[int, Live]]]] = {4: [], 6: []}
        self.version = 0            # bumped on every change: readers can cache by it

    def __len__(self) -> int:
        return self._n

    def get(self, nas: str, sid: str) -> Live | None:
        d = self._by_nas.get(nas)
        return d.get(sid) if d is not None else None

    def by_nas(self, nas: str) -> list[Live]:
        return list(self._by_nas.get(nas, {}).values())

    def sessions(self) -> list[Live]:
        """Every live session (a snapshot: the table may change while it is walked)."""
        return [s for d in self._by_nas.values() for s in d.values()]

    def add(self, s: Live) -> list[Live]:
        """Add ``s``; returns the sessions it displaced (same key, or same address)."""
        displaced = []
        old = self.get(s.nas, s.sid)
        if old is not None:
            self.remove(old)
            displaced.append(old)
        self._by_nas.setdefault(s.nas, {})[s.sid] = s
        self._n += 1
        for fam, value, plen in s.addrs:
            d = self._table(fam, plen)
            prev = d.get(value >> self._shift(fam, plen))
            if prev is not None and prev is not s:
                self.remove(prev)
                displaced.append(prev)
            d[value >> self._shift(fam, plen)] = s
        self.version += 1
        return displaced

    def remove(self, s: Live) -> None:
        by_sid = self._by_nas.get(s.nas)
        if by_sid is not None and by_sid.get(s.sid) is s:
            del by_sid[s.sid]
            self._n -= 1
            if not by_sid:
                del self._by_nas[s.nas]
        for fam, value, plen in s.addrs:
            d = self._table(fam, plen)
            k = value >> self._shift(fam, plen)
            if d.get(k) is s:
                del d[k]
        self.version += 1

    @staticmethod
    def _shift(fam: int, plen: int) -> int:
        return (32 if fam == 4 else 128) - plen

    def _table(self, fam: int, plen: int) -> dict[int, Live]:
        shift = self._shift(fam, plen)
        tables = self._tables[fam]
        for sh, d in tables:
            if sh == shift:
                return d
        d = {}
        tables.append((shift, d))
        tables.sort(key=lambda t: t[0])
        return d

    def find(self, fam: int, ip: int) -> tuple[Live, int] | None:
        """The session holding ``ip`` and the prefix length that matched, longest first."""
        full = 32 if fam == 4 else 128
        for shift, d in self._tables[fam]:
            s = d.get(ip >> shift)
            if s is not None:
                return s, full - shift
        return None

    def lookup(self, host: str) -> Live | None:
        p = parse_host(host)
        if p is None:
            return None
        hit = self.find(*p)
        return hit[0] if hit else None

    def customer_of(self, host: str) -> str | None:
        s = self.lookup(host)
        return s.customer if s is not None else None

    def contains(self, host: str) -> bool:
        """Is ``host`` inside a live session's address or prefix? (cheap; for ACLs)"""
        return self.lookup(host) is not None

    def addresses(self) -> list[tuple[Net, str]]:
        """Every live address with its customer (attributed sessions only; subscribers.live.LiveAddresses)."""
        return [(n, s.customer) for d in self._by_nas.values() for s in d.values() if s.customer for n in s.addrs]

    def items(self) -> list[tuple[Net, Live]]:
        return [(n, s) for s in self.sessions() for n in s.addrs]
