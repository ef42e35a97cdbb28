"""The walled garden (Art. 25): what the DNS guard answers a suspended customer (pure).

A customer in ``walled-garden`` or ``block`` mode gets, for every name, the address of the
notice page: A and AAAA queries an answer record (TTL 0, so a resume takes effect on the next
lookup), other types NODATA, always with EDE 17 (Filtered) and the reason as extra text. In
``walled-garden`` mode the names of ``suspension.allow`` and their subdomains (payment site,
support, OS updates) are resolved normally instead; ``block`` allows none. ``throttle`` leaves
DNS alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..subscribers.model import Suspended
from .wire import NOERROR, TYPE_A, TYPE_AAAA, answer, sinkhole_record

EDE_FILTERED = 17
TTL = 0


@dataclass(frozen=True)
class WalledGarden:
    a: bytes | None = None                 # the notice page's IPv4 address, packed
    aaaa: bytes | None = None
    allow: frozenset[str] = frozenset()    # normalized names

    @classmethod
    def of(cls, settings) -> WalledGarden:
        page = settings.notice_page
        return cls(ipaddress.IPv4Address(page.a).packed if page.a else None,
                   ipaddress.IPv6Address(page.aaaa).packed if page.aaaa else None, frozenset(settings.allow))

    def allowed(self, s: Suspended, sfx: list[str]) -> bool:
        """Is a name (its suffixes, longest first) resolved normally for this suspension?"""
        if not s.walled:
            return True
        return s.mode == "walled-garden" and any(x in self.allow for x in sfx)

    def answer(self, data: bytes, q, s: Suspended) -> bytes:
        """The local answer: the notice page's address (A/AAAA) or NODATA, EDE 17 with the reason."""
        addr = self.a if q.qtype == TYPE_A else self.aaaa if q.qtype == TYPE_AAAA else None
        records, n = (sinkhole_record(q.qtype, addr, TTL), 1) if addr is not None else (b"", 0)
        # EDE extra text is UTF-8 (RFC 8914); wire.opt_rr keeps 200 bytes: cut on a character boundary
        text = f"suspended ({s.cause}): {s.reason}".encode()[:200].decode(errors="ignore")
        return answer(data, q, NOERROR, ede=EDE_FILTERED, text=text, records=records, ancount=n)
