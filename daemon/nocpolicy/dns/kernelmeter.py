"""A kernel backstop behind the per-source rate limit: ``table inet nocpolicy_dnsguard`` (issue 14).

The user-space limiter (ratelimit.py) decides per query, but only for queries the guard has
read: a flood still crosses the one UDP socket buffer it shares with every customer, and a
guard descheduled for a few hundred milliseconds on a loaded machine lets that buffer fill,
after which the kernel drops *everybody's* datagrams. dnsdist answers this with eBPF dynamic
blocks; here an nftables meter (a dynamic set keyed by the source prefix, with a ``limit``
per element) drops UDP datagrams to the guard's ports from a source past
``dns.ratelimit.kernel_qps`` before they are queued to the socket.

Opt-in (0: off, the default): it only ever acts far above the user-space limit, which stays
in front for everything it does better (slip, the blocked-answer limit, counting).
Exempt customers' prefixes (public safety) are accepted before the meter. Sources are keyed
by the same prefix lengths as the user-space limit (IPv4 /32, IPv6 /56 by default); the set
holds at most ``SET_SIZE`` sources, each forgotten ``IDLE`` after its last datagram.

Render (pure) -> ``nft -f -`` (one transaction: add, delete, re-create the table) -> read
back (the chain and its drop counter, ``nft -j list table``). Removed on stop and when the
policy turns it off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..detect.nft import apply as nft_apply
from ..errors import EnforcementError

TABLE = "nocpolicy_dnsguard"
SET_SIZE = 65536        # sources tracked at once (the kernel refuses new ones past it: not metered)
IDLE = 10               # seconds after its last datagram a source leaves the set


@dataclass(frozen=True)
class Meter:
    """What the table enforces (all of it comes from the policy and the listen options)."""

    qps: int                              # datagrams per second per source prefix; 0: no table
    burst: int
    ports: tuple[int, ...]
    ipv4_prefix: int = 32
    ipv6_prefix: int = 56
    exempt: tuple[str, ...] = ()          # prefixes never metered (exempt customers)


def _mask(bits: int, version: int) -> str:
    net = ipaddress.ip_network(f"{'0.0.0.0' if version == 4 else '::'}/{bits}")
    return str(net.netmask)


def render(m: Meter) -> str:
    """The whole table as one ``nft -f`` script (empty string: nothing to enforce)."""
    if not m.qps or not m.ports:
        return ""
    v4, v6 = _split(m.exempt)
    ports = ", ".join(str(p) for p in sorted(set(m.ports)))
    rate = f"limit rate over {m.qps}/second burst {max(m.burst, 1)} packets"
    key4 = "ip saddr" if m.ipv4_prefix == 32 else f"ip saddr & {_mask(m.ipv4_prefix, 4)}"
    key6 = "ip6 saddr" if m.ipv6_prefix == 128 else f"ip6 saddr & {_mask(m.ipv6_prefix, 6)}"
    dyn = f"size {SET_SIZE}; flags dynamic, timeout; timeout {IDLE}s;"
    lines = [
        f"add table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f"  set exempt4 {{ type ipv4_addr; flags interval; {_elements(v4)}}}",
        f"  set exempt6 {{ type ipv6_addr; flags interval; {_elements(v6)}}}",
        f"  set flood4 {{ type ipv4_addr; {dyn} }}",
        f"  set flood6 {{ type ipv6_addr; {dyn} }}",
        "  chain guard { type filter hook input priority filter - 10; policy accept;",
        f"    udp dport {{ {ports} }} ip saddr @exempt4 accept",
        f"    udp dport {{ {ports} }} ip6 saddr @exempt6 accept",
        f"    udp dport {{ {ports} }} update @flood4 {{ {key4} {rate} }} counter drop",
        f"    udp dport {{ {ports} }} update @flood6 {{ {key6} {rate} }} counter drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\n"


def _split(prefixes: Iterable[str]) -> tuple[list[str], list[str]]:
    v4, v6 = [], []
    for p in prefixes:
        net = ipaddress.ip_network(p, strict=False)
        (v4 if net.version == 4 else v6).append(str(net))
    return v4, v6


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }}; " if items else ""


def dropped(listing: dict) -> int | None:
    """Packets the meter dropped, from ``nft -j list table`` output (None: no meter rule)."""
    total, found = 0, False
    for item in listing.get("nftables", []):
        rule = item.get("rule")
        if not rule or rule.get("chain") != "guard":
            continue
        exprs = rule.get("expr", [])
        if not any("set" in e and e["set"].get("op") == "update" for e in exprs if isinstance(e, dict)):
            continue
        for e in exprs:
            if isinstance(e, dict) and "counter" in e:
                found = True
                total += int(e["counter"].get("packets", 0))
    return total if found else None


async def read_back(command: tuple[str, ...] = ("nft",), limit: float = 10.0) -> dict | None:
    """``nft -j list table inet nocpolicy_dnsguard`` (None: no such table)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, "-j", "list", "table", "inet", TABLE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise EnforcementError(f"cannot run {command[0]}: {exc.strerror or exc}") from exc
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EnforcementError(f"{command[0]} list table did not finish within {limit:.0f}s") from None
    if proc.returncode != 0:
        return None
    return json.loads(out or b"{}")


async def enforce(m: Meter, command: tuple[str, ...] = ("nft",)) -> int | None:
    """Make the kernel hold exactly ``render(m)`` (or no table when off) and check it: the
    meter's drop counter read back (None when off). Raises EnforcementError."""
    script = render(m)
    if not script:
        await nft_apply(command, delete_script())
        return None
    await nft_apply(command, script)
    listing = await read_back(command)
    n = dropped(listing or {})
    if n is None:
        raise EnforcementError(f"nft: table inet {TABLE} was applied but its meter rules are not there")
    return n


class KernelMeter:
    """The one owner of the table: the meter in force, its drop count (kept across re-creations
    of the table, whose counter starts at zero each time) and the errors, in ``counters``
    (``kernel_dropped``, ``kernel_errors``: DnsStats.limits)."""

    def __init__(self, counters: dict, command: tuple[str, ...] = ("nft",)):
        self.counters, self.command = counters, command
        self.meter: Meter | None = None      # in force (None: no table of ours)
        self._base = 0                       # drops counted by earlier tables
        self._last = 0
        self._lock = asyncio.Lock()

    async def set(self, m: Meter | None) -> None:
        """Enforce ``m`` (None or qps 0: remove the table). Raises EnforcementError (counted)."""
        async with self._lock:
            if m == self.meter or (self.meter is None and (m is None or not m.qps)):
                return
            try:
                n = await enforce(m if m is not None else Meter(0, 0, ()), self.command)
            except EnforcementError:
                self.counters["kernel_errors"] = self.counters.get("kernel_errors", 0) + 1
                raise
            self._base, self._last = self._base + self._last, n or 0
            self.meter = m if n is not None else None
            self._publish()

    async def poll(self) -> None:
        """Read the drop counter back (a vanished table is applied again)."""
        async with self._lock:
            if self.meter is None:
                return
            listing = await read_back(self.command)
            n = dropped(listing or {})
            if n is None:
                m, self.meter = self.meter, None
                self.counters["kernel_errors"] = self.counters.get("kernel_errors", 0) + 1
                self._base, self._last = self._base + self._last, await enforce(m, self.command) or 0
                self.meter = m
            else:
                self._last = n
            self._publish()

    def _publish(self) -> None:
        self.counters["kernel_dropped"] = self._base + self._last
