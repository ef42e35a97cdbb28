"""Client address -> customer id by longest-prefix match (pure; built once per policy).

One dict per prefix length, keyed by the integer network address: a lookup is
at most 33 (IPv4) or 129 (IPv6) dict probes over the lengths actually present,
usually a handful. Built for 100k prefixes (~0.2 s, ~20 MB).
"""

from __future__ import annotations

import socket

_AF4, _AF6 = socket.AF_INET, socket.AF_INET6
_inet_pton = socket.inet_pton


class PrefixIndex:
    def __init__(self, items=()):
        by_len: dict[tuple[int, int], dict[int, str]] = {}
        for net, value in items:
            bits = 32 if net.version == 4 else 128
            key = int(net.network_address) >> (bits - net.prefixlen)
            by_len.setdefault((net.version, net.prefixlen), {})[key] = value
        self.v4 = sorted(((32 - plen, d) for (v, plen), d in by_len.items() if v == 4), key=lambda x: x[0])
        self.v6 = sorted(((128 - plen, d) for (v, plen), d in by_len.items() if v == 6), key=lambda x: x[0])
        self.size = sum(len(d) for d in by_len.values())

    @classmethod
    def of_customers(cls, customers) -> PrefixIndex:
        return cls((p, c.id) for c in customers for p in c.prefixes)

    def lookup(self, host: str) -> str | None:
        """The value of the longest prefix containing ``host`` (an address string), or None."""
        try:
            if ":" in host:
                if "%" in host:
                    host = host.split("%", 1)[0]
                ip = int.from_bytes(_inet_pton(_AF6, host), "big")
                if ip >> 32 == 0xFFFF:                     # IPv4-mapped (dual-stack socket)
                    return self._find(self.v4, ip & 0xFFFFFFFF)
                return self._find(self.v6, ip)
            return self._find(self.v4, int.from_bytes(_inet_pton(_AF4, host), "big"))
        except (OSError, ValueError):
            return None

    @staticmethod
    def _find(tables, ip: int) -> str | None:
        for shift, d in tables:            # longest prefix (smallest shift) first
            v = d.get(ip >> shift)
            if v is not None:
                return v
        return None
