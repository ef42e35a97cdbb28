"""nftables address blocks: ``table inet nocpolicy_detect`` (render pure, apply at the edge).

Sets of (customer prefix . C&C address) with per-element timeouts, so a block
expires by itself in the kernel even if the daemon is gone. The table is
rendered whole on start and policy changes (one ``nft -f`` transaction: add,
delete, re-create), and elements are added incrementally on detections.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

from ..errors import EnforcementError
from .blocks import AddrBlock


def elements(blocks: Iterable[AddrBlock], prefixes_of, now: float) -> tuple[list[str], list[str]]:
    """(IPv4 elements, IPv6 elements) as nft text with their remaining timeouts."""
    v4, v6 = [], []
    for b in blocks:
        remaining = int(b.expires - now)
        if remaining < 1:
            continue
        try:
            addr = ipaddress.ip_address(b.address)
        except ValueError:
            continue
        for p in prefixes_of(b.customer):
            if p.version != addr.version:
                continue
            (v4 if addr.version == 4 else v6).append(f"{p} . {addr} timeout {remaining}s")
    return v4, v6


def table_script(table: str, hook: str, v4: list[str], v6: list[str]) -> str:
    prio = "filter - 5"
    lines = [
        f"add table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  set block4 { type ipv4_addr . ipv4_addr; flags interval, timeout; }",
        "  set block6 { type ipv6_addr . ipv6_addr; flags interval, timeout; }",
        f"  chain cc_block {{ type filter hook {hook} priority {prio}; policy accept;",
        "    ip saddr . ip daddr @block4 counter drop",
        "    ip6 saddr . ip6 daddr @block6 counter drop",
        "  }",
        "}",
    ]
    lines += _add(table, v4, v6, refresh=False)
    return "\n".join(lines) + "\n"


def _add(table: str, v4: list[str], v6: list[str], refresh: bool) -> list[str]:
    out = []
    for name, elems in (("block4", v4), ("block6", v6)):
        if not elems:
            continue
        body = ", ".join(elems)
        bare = ", ".join(e.split(" timeout ")[0] for e in elems)
        if refresh:
            # add (so it exists) + delete + add: a fresh timeout, atomically
            out.append(f"add element inet {table} {name} {{ {bare} }}")
            out.append(f"delete element inet {table} {name} {{ {bare} }}")
        out.append(f"add element inet {table} {name} {{ {body} }}")
    return out


def add_script(table: str, v4: list[str], v6: list[str]) -> str:
    return "\n".join(_add(table, v4, v6, refresh=True)) + "\n"


def delete_script(table: str) -> str:
    return f"add table inet {table}\ndelete table inet {table}\n"


async def apply(command: tuple[str, ...], script: str, limit: float = 10.0) -> None:
    """Run ``<command> -f -`` with the script on stdin (one transaction)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, "-f", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise EnforcementError(f"cannot run {command[0]}: {exc.strerror or exc}") from exc
    try:
        _, err = await asyncio.wait_for(proc.communicate(script.encode()), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EnforcementError(f"{' '.join(command)} -f - did not finish within {limit:.0f}s") from None
    if proc.returncode != 0:
        raise EnforcementError(f"{' '.join(command)} -f - failed ({proc.returncode}): "
                               f"{err.decode(errors='replace').strip()[:500]}")


async def read_elements(command: tuple[str, ...], table: str) -> list[dict]:
    """The elements the kernel holds (for status and tests): [{set, key, timeout, expires}]."""
    import json
    proc = await asyncio.create_subprocess_exec(
        *command, "-j", "list", "table", "inet", table,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise EnforcementError(f"nft list table inet {table} failed: {err.decode(errors='replace').strip()}")
    res = []
    for item in json.loads(out).get("nftables", []):
        s = item.get("set")
        if not s:
            continue
        for e in s.get("elem", []):
            e = e.get("elem", e)
            val = e.get("val", e)
            parts = val.get("concat", []) if isinstance(val, dict) else []
            key = " . ".join(f"{p['prefix']['addr']}/{p['prefix']['len']}" if isinstance(p, dict) else str(p)
                             for p in parts)
            res.append({"set": s["name"], "key": key, "timeout": e.get("timeout"), "expires": e.get("expires")})
    return res
