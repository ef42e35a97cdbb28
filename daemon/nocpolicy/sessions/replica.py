"""A DNS worker process's copy of the live session addresses (address -> customer id).

The main process owns the sessions (sessions/component.py); every change is sent to
each worker as a list of ``[op, addrs, customer, implicit]`` (op ``+`` or ``-``, addrs
as ``[family, network int as text, prefix length]``) and applied here, before the
main process answers the request that caused it. At start a worker reads the open
sessions from the store.
"""

from __future__ import annotations

import sqlite3

from .model import Net
from .table import parse_host

Change = tuple[str, tuple[Net, ...], str | None, bool]


def change_to_json(c: Change) -> list:
    op, addrs, cid, implicit = c
    return [op, [[f, str(v), p] for f, v, p in addrs], cid, implicit]


def change_from_json(x) -> Change:
    op, addrs, cid, implicit = x
    if op not in ("+", "-") or not isinstance(addrs, list) or not (cid is None or isinstance(cid, str)):
        raise ValueError(f"not a session change: {x!r}")
    nets = []
    for f, v, p in addrs:
        if f not in (4, 6) or not 0 <= int(p) <= (32 if f == 4 else 128):
            raise ValueError(f"not an address: {[f, v, p]!r}")
        nets.append((int(f), int(v), int(p)))
    return op, tuple(nets), cid, bool(implicit)


class AddressTable:
    """Longest-prefix lookup of live session addresses, like LiveTable but holding only
    the customer id (what a worker needs)."""

    def __init__(self):
        self._tables: dict[int, list[tuple[int, dict[int, str | None]]]] = {4: [], 6: []}
        self.implicit: dict[str, int] = {}      # implicit customer -> live sessions

    def apply(self, c: Change) -> None:
        op, addrs, cid, implicit = c
        for fam, value, plen in addrs:
            shift = (32 if fam == 4 else 128) - plen
            d = self._table(fam, shift)
            if op == "+":
                d[value >> shift] = cid
            elif d.get(value >> shift, 0) == cid:
                del d[value >> shift]
        if implicit and cid is not None:
            n = self.implicit.get(cid, 0) + (1 if op == "+" else -1)
            if n > 0:
                self.implicit[cid] = n
            else:
                self.implicit.pop(cid, None)

    def _table(self, fam: int, shift: int) -> dict[int, str | None]:
        tables = self._tables[fam]
        for sh, d in tables:
            if sh == shift:
                return d
        d: dict[int, str | None] = {}
        tables.append((shift, d))
        tables.sort(key=lambda t: t[0])
        return d

    def customer_of(self, host: str) -> str | None:
        p = parse_host(host)
        if p is None:
            return None
        fam, ip = p
        for shift, d in self._tables[fam]:
            if (ip >> shift) in d:
                return d[ip >> shift]
        return None

    def contains(self, host: str) -> bool:
        p = parse_host(host)
        return p is not None and any((p[1] >> shift) in d for shift, d in self._tables[p[0]])

    def load(self, db_path: str) -> int:
        """The open sessions in the store (a worker starting)."""
        from .history import parse_addrs
        try:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            try:
                rows = db.execute("SELECT customer, implicit, addrs FROM sessions WHERE stop IS NULL").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return 0                 # no session table yet: nothing is live
        for cid, implicit, addrs in rows:
            self.apply(("+", parse_addrs(addrs), cid, bool(implicit)))
        return len(rows)
