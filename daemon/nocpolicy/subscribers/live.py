"""Live sessions in the client lookup: addresses that sessions (sessions/, RADIUS and Kea)
hold right now, next to the policy's static prefixes.

``ClientLookup`` is what the DNS engine looks clients up in: the static prefixes first
(a session address inside another customer's static prefix is a conflict the static
prefix wins; the sessions area counts it), then the live sessions, longest prefix first.
In the main process the live sessions are the Sessions component's own table; a DNS
worker keeps an ``AddressTable`` fed with the main process's changes (``Change``, sent
as JSON over the worker pipe) and, when it starts, with the open sessions in the store.
"""

from __future__ import annotations

import socket
import sqlite3
from typing import Protocol

Net = tuple[int, int, int]                                  # (4 | 6, network as int, prefix length)
Change = tuple[str, tuple[Net, ...], str | None, bool]      # ("+" | "-", addrs, customer, implicit)

_inet_pton = socket.inet_pton


class LiveAddresses(Protocol):
    def customer_of(self, host: str) -> str | None: ...
    def contains(self, host: str) -> bool: ...
    def has_customer(self, cid: str) -> bool: ...
    def addresses(self) -> list[tuple[Net, str]]: ...


def parse_host(host: str) -> tuple[int, int] | None:
    """``(family, int)`` of an address string (IPv4-mapped IPv6 counts as IPv4), or None."""
    try:
        if ":" in host:
            if "%" in host:
                host = host.split("%", 1)[0]
            ip = int.from_bytes(_inet_pton(socket.AF_INET6, host), "big")
            if ip >> 32 == 0xFFFF:
                return 4, ip & 0xFFFFFFFF
            return 6, ip
        return 4, int.from_bytes(_inet_pton(socket.AF_INET, host), "big")
    except (OSError, ValueError):
        return None


class ClientLookup:
    """Has the ``lookup(host) -> customer id | None`` of a static PrefixIndex, so the DNS
    engine takes it in its place; ``static`` is the policy's index."""

    __slots__ = ("static", "live", "size")

    def __init__(self, static, live: LiveAddresses):
        self.static = static
        self.live = live
        self.size = getattr(static, "size", 0)

    def lookup(self, host: str) -> str | None:
        cid = self.static.lookup(host)
        if cid is not None:
            return cid
        return self.live.customer_of(host)


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


def parse_addrs(text: str) -> tuple[Net, ...]:
    """The ``addrs`` column of the session history: ``fam:int:plen`` separated by spaces."""
    out = []
    for part in text.split():
        fam, value, plen = part.split(":")
        out.append((int(fam), int(value), int(plen)))
    return tuple(out)


class AddressTable:
    """A DNS worker's copy of the live session addresses: address -> customer id."""

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

    def has_customer(self, cid: str) -> bool:
        """Does a live session name implicit customer ``cid``?"""
        return cid in self.implicit

    def contains(self, host: str) -> bool:
        p = parse_host(host)
        return p is not None and any((p[1] >> shift) in d for shift, d in self._tables[p[0]])

    def addresses(self) -> list[tuple[Net, str]]:
        """Every address held, with its customer (attributed sessions only)."""
        full = {4: 32, 6: 128}
        return [((fam, key << shift, full[fam] - shift), cid)
                for fam, tables in self._tables.items() for shift, d in tables
                for key, cid in d.items() if cid is not None]

    def load(self, db_path: str) -> int:
        """The open sessions in the store (a worker starting); 0 when there is no history yet."""
        try:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            try:
                rows = db.execute("SELECT customer, implicit, addrs FROM sessions WHERE stop IS NULL").fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return 0
        for cid, implicit, addrs in rows:
            self.apply(("+", parse_addrs(addrs), cid, bool(implicit)))
        return len(rows)
