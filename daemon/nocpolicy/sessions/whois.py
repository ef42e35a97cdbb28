"""``whois ADDRESS [--at] [--port]``: which session (and customer) held an address.

Pure apart from the history it reads. A public address inside a CGNAT pool is
first mapped back to the internal address through the pool's deterministic
port blocks (RFC 7422), then looked up like any other address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..policy.sessions import NatPool


@dataclass(frozen=True)
class NatHit:
    pool: str
    internal: str
    ports: tuple[int, int]


def nat_forward(pool: NatPool, internal: ipaddress.IPv4Address) -> tuple[str, tuple[int, int]]:
    """Internal address -> (public address, its port block)."""
    k = int(internal) - int(pool.internal.network_address)
    per = pool.blocks_per_address
    public = pool.public.network_address + k // per
    first = pool.first_port + (k % per) * pool.block_size
    return str(public), (first, first + pool.block_size - 1)


def nat_reverse(pools, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                port: int | None) -> tuple[NatPool | None, NatHit | None, str]:
    """(pool containing ``address``, the internal host, or why none)."""
    for pool in pools:
        if address.version != 4 or address not in pool.public:
            continue
        if port is None:
            return pool, None, f"{address} is a CGNAT address of pool {pool.id}: give --port"
        if not pool.first_port <= port <= pool.last_port:
            return pool, None, (f"port {port} is outside pool {pool.id}'s mapped range "
                                f"{pool.first_port}-{pool.last_port}")
        block = (port - pool.first_port) // pool.block_size
        if block >= pool.blocks_per_address:
            return pool, None, f"port {port} is past the last whole block of pool {pool.id}"
        k = (int(address) - int(pool.public.network_address)) * pool.blocks_per_address + block
        if k >= pool.internal.num_addresses:
            return pool, None, f"{address} port {port} maps to no internal address of pool {pool.id}"
        first = pool.first_port + block * pool.block_size
        internal = pool.internal.network_address + k
        return pool, NatHit(pool.id, str(internal), (first, first + pool.block_size - 1)), ""
    return None, None, ""


def whois(history, pools, address: str, ts: float, port: int | None) -> dict:
    """The answer of ``whois``: matches (customer + session) or ``unattributed`` with a reason."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4/IPv6 address") from None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    out: dict = {"address": str(ip), "at": ts, "port": port}
    pool, hit, why = nat_reverse(pools, ip, port)
    if pool is not None:
        if hit is None:
            return {**out, "matches": [], "unattributed": why}
        out["nat"] = {"pool": hit.pool, "internal": hit.internal, "ports": list(hit.ports)}
        ip = ipaddress.ip_address(hit.internal)
    rows = history.at(ip.version, int(ip), ts)
    matches = [{"customer": r["customer"], "implicit": r["implicit"], "matched_prefix_length": plen,
                "session": r} for r, plen in rows]
    if not matches:
        out["unattributed"] = f"no session held {ip} at that time (history kept: see sessions.retention)"
    elif all(m["customer"] is None for m in matches):
        out["unattributed"] = "the session(s) found named no customer (attribute missing or regex did not match)"
    out["matches"] = matches
    return out
