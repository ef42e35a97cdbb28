"""The upload half of an apply (Linux): ifb devices, their filters, the ingress redirect.

Every function reads the kernel through a :class:`kernel.Runner` and returns ``(do, undo)``
pairs of ``tc -batch`` text for apply.py to run with its other tc changes (undo None: nothing
to put back). The filter list on an ifb is replaced make-before-break: the new filters go in
at the other generation's prefs (upload.FILTER_PREFS), then the old prefs are deleted, so no
packet goes unclassified in between.
"""

from __future__ import annotations

import re

from ..errors import EnforcementError
from .kernel import Runner
from .plan import Plan
from .upload import FILTER_PREFS, filter_lines, ifb_name, ingress_line, redirect_line

Change = tuple[str, str | None]


def ensure_ifbs(runner: Runner, plan: Plan) -> list[str]:
    """Create (and bring up) the plan's ifb devices; returns the names created here (to delete
    on rollback)."""
    have = runner.links() if plan.uploads else set()
    created = []
    for up in plan.uploads:
        if up.ifb not in have:
            runner.check("ip", "link", "add", up.ifb, "type", "ifb")
            created.append(up.ifb)
        runner.check("ip", "link", "set", up.ifb, "up")
    return created


def parse_filters(out: str) -> tuple[set[int], set[tuple[str, int]]]:
    """``tc filter show`` of an ifb -> (prefs in use, {(source prefix, class minor)}) of its u32
    source filters (the matches are printed as hex words: offset 12 = IPv4 source, 8..20 = IPv6)."""
    import ipaddress
    prefs = {int(p) for p in re.findall(r"\bpref (\d+)\b", out)}
    found: set[tuple[str, int]] = set()
    for block in re.split(r"\n(?=filter )", out):
        m = re.search(r"\bprotocol (ipv6|ip)\b.*?\bflowid 1:([0-9a-f]+)", block)
        if not m:
            continue
        v6 = m.group(1) == "ipv6"
        value = mask = 0
        for val, msk, off in re.findall(r"match ([0-9a-f]{8})/([0-9a-f]{8}) at (\d+)", block):
            shift = (20 - int(off)) * 8 if v6 else 0
            value |= int(val, 16) << shift
            mask |= int(msk, 16) << shift
        bits = 128 if v6 else 32
        addr = ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value)
        found.add((str(ipaddress.ip_network(f"{addr}/{bin(mask).count('1')}", strict=False)) if mask.bit_count()
                   != bits else str(addr), int(m.group(2), 16)))
    return prefs, found


def _count(listing: str) -> int:
    return len(re.findall(r"\bflowid 1:[0-9a-f]+", listing))


def _planned(plan: Plan) -> set[tuple[str, int]]:
    import ipaddress
    out = set()
    for e in plan.up_caps:
        n = ipaddress.ip_network(e.prefix, strict=False)
        out.add((str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n), e.minor))
    return out


def filter_changes(runner: Runner, plan: Plan) -> tuple[list[Change], list[Change]]:
    """(before nft, after nft): the new generation of source filters, then the old one deleted."""
    pre: list[Change] = []
    post: list[Change] = []
    want = _planned(plan)
    for up in plan.uploads:
        listing = runner.run("tc", "filter", "show", "dev", up.ifb, "parent", "1:").out
        prefs, have = parse_filters(listing)
        one_gen = any(prefs and prefs <= set(g) for g in FILTER_PREFS)
        if one_gen and have == want and _count(listing) == len(plan.up_caps):
            continue                                               # already what the plan says
        old = 0 if prefs & set(FILTER_PREFS[0]) else 1 if prefs & set(FILTER_PREFS[1]) else None
        new = 1 if old == 0 else 0
        stale = sorted(prefs & set(FILTER_PREFS[new]))            # left over by an interrupted apply
        if stale:
            pre.append(("\n".join(_del(up.ifb, p) for p in stale), None))
        lines = filter_lines(up, plan.up_caps, new)
        if lines:
            used = sorted({int(m) for m in re.findall(r" pref (\d+) ", "\n".join(lines))})
            pre.append(("\n".join(lines), "\n".join(_del(up.ifb, p) for p in used)))
        if old is not None:
            post += [(_del(up.ifb, p), None) for p in sorted(prefs & set(FILTER_PREFS[old]))]
    return pre, post


def _del(ifb: str, pref: int) -> str:
    return f"filter del dev {ifb} parent 1: pref {pref}"


def _redirects_to(runner: Runner, dev: str, ifb: str) -> bool:
    out = runner.run("tc", "filter", "show", "dev", dev, "ingress").out
    return f"redirect to device {ifb})" in out.lower()


def ingress_changes(runner: Runner, plan: Plan) -> list[Change]:
    """The ingress qdisc and the redirect to the ifb on every shaped interface (added last, so
    traffic reaches the ifb only once its tree and filters are in place)."""
    out: list[Change] = []
    for up in plan.uploads:
        has_ingress = "ingress ffff:" in runner.run("tc", "qdisc", "show", "dev", up.dev, "ingress").out
        if not has_ingress:
            out.append((ingress_line(up), f"qdisc del dev {up.dev} ingress"))
        if not has_ingress or not _redirects_to(runner, up.dev, up.ifb):
            out.append((redirect_line(up, plan.redirect), f"filter del dev {up.dev} parent ffff: pref 1"))
    return out


def stale_uploads(runner: Runner, plan: Plan, links: set[str]) -> tuple[list[Change], list[str]]:
    """Upload shaping the plan no longer has (a policy without ``up`` caps now): the ingress
    qdiscs that redirect to our ifb devices, and those devices (deleted after the tc batch)."""
    planned = {up.dev for up in plan.uploads}
    changes, gone = [], []
    for tree in plan.interfaces:
        ifb = ifb_name(tree.name)
        if tree.name in planned or ifb not in links:
            continue
        if _redirects_to(runner, tree.name, ifb):
            changes.append((f"qdisc del dev {tree.name} ingress", None))
        gone.append(ifb)
    return changes, gone


def verify_uploads(runner: Runner, plan: Plan) -> None:
    """Each interface redirects its arrivals to its ifb; each ifb has exactly the plan's filters."""
    for up in plan.uploads:
        if not _redirects_to(runner, up.dev, up.ifb):
            raise EnforcementError(f"verify: {up.dev} does not redirect its arrivals to {up.ifb} "
                                   "(uploads would go unshaped)")
        n = _count(runner.check("tc", "filter", "show", "dev", up.ifb, "parent", "1:"))
        if n != len(plan.up_caps):
            raise EnforcementError(f"verify: {up.ifb} holds {n} upload filters, the plan has {len(plan.up_caps)}")
