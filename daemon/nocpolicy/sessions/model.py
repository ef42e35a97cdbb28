"""What a session is, and the events the sources (RADIUS, Kea) turn their input into.

Addresses are kept as ``(family, network int, prefix length)`` triples: cheap to
hash, to index by prefix length, and to store as fixed-width hex keys.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import NamedTuple

Net = tuple[int, int, int]          # (4 | 6, network as int, prefix length)


def net_of(prefix: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> Net:
    n = prefix if not isinstance(prefix, str) else ipaddress.ip_network(prefix, strict=False)
    return (n.version, int(n.network_address), n.prefixlen)


def net_text(n: Net) -> str:
    fam, value, plen = n
    if fam == 4:      # the common case, without an ipaddress object (same text)
        text = socket.inet_ntoa(value.to_bytes(4, "big"))
        return text if plen == 32 else f"{text}/{plen}"
    addr = ipaddress.IPv6Address(value)
    full = 32 if fam == 4 else 128
    return str(addr) if plen == full else f"{addr}/{plen}"


def net_host(n: Net) -> str:
    """The first address of a network, as text."""
    fam, value, _ = n
    if fam == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def net_key(n: Net) -> str:
    """Fixed-width text key of a network (what the history indexes)."""
    fam, value, plen = n
    return f"4{value:08x}" if fam == 4 else f"6{value:032x}"


def covering(fam: int, value: int, plen: int) -> Net:
    bits = 32 if fam == 4 else 128
    return (fam, (value >> (bits - plen)) << (bits - plen), plen)


class SessionInfo(NamedTuple):
    """What a source knows about a session when it starts (or is first seen). A named tuple:
    one is built per accounting request, and a frozen dataclass costs ~4 times as much."""

    source: str                 # radius | kea4 | kea6
    nas: str                    # NAS id (RADIUS client id / NAS-Identifier) or the lease file
    sid: str                    # Acct-Session-Id, or address|client for a lease
    customer: str | None        # extracted id (None: unattributed)
    login: str = ""
    calling: str = ""
    klass: str = ""
    addrs: tuple[Net, ...] = ()
    interval: float = 0.0       # expected interim/renew interval (0: none expected)


class Event(NamedTuple):
    """``kind``: start | update | stop | nas-off. ``ts`` in seconds since the epoch;
    ``elapsed`` is how long the session has run (RADIUS Acct-Session-Time), if known."""

    kind: str
    info: SessionInfo
    ts: float
    elapsed: float | None = None
    reason: str = ""            # for stop: Acct-Terminate-Cause or "lease expired", ...


def pack_addrs(addrs: tuple[Net, ...]) -> bytes:
    """``addrs`` as one small bytes object: family, prefix length, then 4 or 16 address bytes
    each (a tuple of tuples of ints costs ~300 bytes a session; this ~60)."""
    return b"".join(bytes((fam, plen)) + value.to_bytes(4 if fam == 4 else 16, "big")
                    for fam, value, plen in addrs)


def unpack_addrs(b: bytes) -> tuple[Net, ...]:
    out, i = [], 0
    while i < len(b):
        fam, plen = b[i], b[i + 1]
        w = 4 if fam == 4 else 16
        out.append((fam, int.from_bytes(b[i + 2:i + 2 + w], "big"), plen))
        i += 2 + w
    return tuple(out)


class Live:
    """One active session as the book and readers see it: a small value object. The live
    table does not keep these (it keeps columns, see table.py); it builds one when asked
    and hands back the same object while its caller still holds it."""

    __slots__ = ("id", "source", "nas", "sid", "customer", "_addrs", "start", "last", "interval", "implicit",
                 "__weakref__")

    def __init__(self, id: int, source: str, nas: str, sid: str, customer: str | None,
                 addrs: tuple[Net, ...], start: float, last: float, interval: float,
                 implicit: bool = False):
        self.id, self.source, self.nas, self.sid, self.customer = id, source, nas, sid, customer
        self._addrs = tuple(addrs)
        self.start, self.last, self.interval, self.implicit = start, last, interval, implicit

    @classmethod
    def make(cls, id: int, source: str, nas: str, sid: str, customer: str | None, addrs: tuple[Net, ...],
             start: float, last: float, interval: float, implicit: bool) -> Live:
        """Like the constructor, without its conversions (the live table's columns)."""
        s = cls.__new__(cls)
        s.id, s.source, s.nas, s.sid, s.customer = id, source, nas, sid, customer
        s._addrs, s.start, s.last, s.interval, s.implicit = addrs, start, last, interval, implicit
        return s

    @property
    def addrs(self) -> tuple[Net, ...]:
        return self._addrs

    def __repr__(self) -> str:
        return (f"Live(id={self.id}, source={self.source!r}, nas={self.nas!r}, sid={self.sid!r}, "
                f"customer={self.customer!r}, addrs={self.addrs!r}, start={self.start}, last={self.last}, "
                f"interval={self.interval}, implicit={self.implicit})")

    def as_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "nas": self.nas, "session_id": self.sid,
                "customer": self.customer,
                "addresses": [net_text(n) for n in self.addrs], "start": self.start,
                "last": self.last, "interval": self.interval}


@dataclass
class Ops:
    """Store writes one event produced (applied in one group commit)."""

    inserts: list[tuple] = field(default_factory=list)     # session rows
    addrs: list[tuple] = field(default_factory=list)       # (session, key, plen, start)
    touches: list[tuple] = field(default_factory=list)     # (last, id)
    closes: list[tuple] = field(default_factory=list)      # (stop, ended, id)

    def __bool__(self) -> bool:
        return bool(self.inserts or self.addrs or self.touches or self.closes)

    def extend(self, other: Ops) -> None:
        self.inserts += other.inserts
        self.addrs += other.addrs
        self.touches += other.touches
        self.closes += other.closes
