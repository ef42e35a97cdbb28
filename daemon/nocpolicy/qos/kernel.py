"""Running nft/tc/ip (optionally inside a named network namespace) and reading their answers.

:class:`Runner` is the only place in qos/ that starts subprocesses. Parsers here
are pure: ``tc class show`` text (iproute2 6.1 prints htb classes as text even
with ``-j``) -> :class:`KClass` records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import EnforcementError

TIMEOUT = 60.0


CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """True when this process may change nft/tc: CAP_NET_ADMIN in its effective set (root or not)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


class Runner:
    """Runs a tool, in ``netns`` when given (``ip netns exec NAME tool ...``)."""

    def __init__(self, netns: str | None = None, timeout: float = TIMEOUT):
        self.netns = netns
        self.timeout = timeout

    def argv(self, tool: str, *args: str) -> list[str]:
        base = [tool, *args]
        return ["ip", "netns", "exec", self.netns, *base] if self.netns else base

    def run(self, tool: str, *args: str, stdin: str | None = None) -> Result:
        argv = self.argv(tool, *args)
        if shutil.which(argv[0]) is None:
            raise EnforcementError(f"{argv[0]} is not installed (Debian package "
                                   f"{'nftables' if argv[0] == 'nft' else 'iproute2'})")
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise EnforcementError(f"{' '.join(argv[:6])} did not finish within {self.timeout:.0f}s") from None
        except OSError as exc:
            raise EnforcementError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        return Result(p.returncode, p.stdout, p.stderr)

    def check(self, tool: str, *args: str, stdin: str | None = None) -> str:
        r = self.run(tool, *args, stdin=stdin)
        if r.rc != 0:
            raise EnforcementError(f"{tool} {' '.join(args)} failed: {(r.err or r.out).strip()[:500]}")
        return r.out

    # -- convenience -------------------------------------------------------------

    def links(self) -> set[str]:
        out = self.check("ip", "-j", "link", "show")
        try:
            return {link["ifname"] for link in json.loads(out or "[]")}
        except (ValueError, KeyError, TypeError) as exc:
            raise EnforcementError(f"cannot parse `ip -j link show`: {exc}") from None


@dataclass(frozen=True)
class KClass:
    minor: int
    parent: int | None      # None: a root class (the HTB trap when not 1:1)
    rate: int
    ceil: int
    prio: int
    leaf: int | None        # leaf qdisc major, if any
    bytes: int = 0
    packets: int = 0
    drops: int = 0
    overlimits: int = 0


_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
_CLASS = re.compile(r"^class htb 1:([0-9a-f]+) (root|parent 1:([0-9a-f]+))(?: leaf ([0-9a-f]+):)?"
                    r"(?: prio (\d+))?(?: quantum \d+)? rate ([\d.]+)([KMGT]?)bit ceil ([\d.]+)([KMGT]?)bit")
_SENT = re.compile(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)")
_QDISC = re.compile(r"^qdisc (\S+) ([0-9a-f]+): (root|parent ([0-9a-f]+):([0-9a-f]+))(.*)$")


def _rate(num: str, unit: str) -> int:
    return int(float(num) * _UNITS[unit])


def parse_classes(text: str) -> dict[int, KClass]:
    """``tc [-s] class show dev X`` -> minor -> KClass (htb classes of qdisc 1: only)."""
    out: dict[int, KClass] = {}
    current = None
    for line in text.splitlines():
        m = _CLASS.match(line.strip())
        if m:
            minor = int(m.group(1), 16)
            current = KClass(minor=minor, parent=None if m.group(2) == "root" else int(m.group(3), 16),
                             rate=_rate(m.group(6), m.group(7)), ceil=_rate(m.group(8), m.group(9)),
                             prio=int(m.group(5) or 0), leaf=int(m.group(4), 16) if m.group(4) else None)
            out[minor] = current
            continue
        s = _SENT.search(line)
        if s and current is not None:
            b, p, d, o = (int(x) for x in s.groups())
            out[current.minor] = current = KClass(**{**current.__dict__, "bytes": b, "packets": p, "drops": d,
                                                     "overlimits": o})
    return out


@dataclass(frozen=True)
class KQdisc:
    kind: str
    handle: int
    parent: int | None      # class minor under 1:, None for root
    detail: str


def parse_qdiscs(text: str) -> list[KQdisc]:
    out = []
    for line in text.splitlines():
        m = _QDISC.match(line.strip())
        if not m:
            continue
        parent = None if m.group(3) == "root" else int(m.group(5), 16)
        if m.group(3) != "root" and m.group(4) != "1":
            continue
        out.append(KQdisc(m.group(1), int(m.group(2), 16), parent, m.group(6).strip()))
    return out


def htb_default(qdiscs: list[KQdisc]) -> int | None:
    """The default class minor of an htb root qdisc with handle 1:, or None if there is none."""
    for q in qdiscs:
        if q.parent is None and q.kind == "htb" and q.handle == 1:
            m = re.search(r"default (0x)?([0-9a-f]+)", q.detail)
            return int(m.group(2), 16) if m else 0
    return None


def rate_close(a: int, b: int) -> bool:
    """tc prints rates rounded (39285714bit -> 39285Kbit): equal within 0.5%."""
    return abs(a - b) <= max(1000, 0.005 * max(a, b))
