"""Who the plan shapes: every customer's addresses and the decisions that bear on its caps.

A :class:`Subject` is the plan's input for one customer: its static prefixes (policy)
followed by the addresses its live sessions hold now (subscribers view), its plan, whether
it is a public-safety customer, and ``rate_cap`` (a runtime decision, e.g. a throttle
suspension, that caps both directions: the lower of it and the plan's caps applies).

:func:`subjects_of` is pure over ``(policy, view)``; the only thing it takes from the view
is a snapshot (``view.live_addresses()`` and each subscriber's ``rate_cap``), so
``build_plan(policy, emergency, subjects=subjects_of(policy, view))`` is a pure function of
the policy and the subscriber view.

nftables interval maps refuse overlapping elements, and a session address may fall inside a
static prefix (the static owner wins, as in the DNS guard's lookup) or inside another live
prefix (a delegated /56 and an address in it): :func:`subjects_of` keeps every static prefix
and drops live addresses that overlap a static prefix or a wider live one it kept first.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

Net = tuple[int, int, int]          # (4 | 6, network as int, prefix length)


@dataclass(frozen=True)
class Subject:
    customer: str
    prefixes: tuple[str, ...]       # static prefixes first, then live session addresses
    plan: str | None = None
    public_safety: bool = False
    rate_cap: int | None = None     # runtime decision: both directions at most this (bit/s)


def net_text(n: Net) -> str:
    fam, value, plen = n
    if fam == 4:      # every live address is formatted at each re-render: no ipaddress object
        text = socket.inet_ntoa(value.to_bytes(4, "big"))
        return text if plen == 32 else f"{text}/{plen}"
    if value >> 48:     # inet_ntop (C) writes RFC 5952 as ipaddress does, but for ::a.b.c.d forms
        text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    else:
        text = str(ipaddress.IPv6Address(value))
    return text if plen == 128 else f"{text}/{plen}"


def _interval(n: Net) -> tuple[int, int, int]:
    fam, value, plen = n
    return fam, value, _last(fam, value, plen)


def _last(fam: int, value: int, plen: int) -> int:
    """The last address of a network."""
    return value + (1 << ((32 if fam == 4 else 128) - plen)) - 1


def _static_intervals(policy) -> dict[int, tuple[list[int], list[int]]]:
    """family -> (sorted starts, ends) of every static prefix (nested ones collapsed)."""
    spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for c in policy.customers:
        for p in c.prefixes:
            fam, lo, hi = _interval((p.version, int(p.network_address), p.prefixlen))
            spans[fam].append((lo, hi))
    out = {}
    for fam, items in spans.items():
        items.sort()
        starts, ends = [], []
        for lo, hi in items:
            if ends and lo <= ends[-1]:
                ends[-1] = max(ends[-1], hi)
                continue
            starts.append(lo)
            ends.append(hi)
        out[fam] = (starts, ends)
    return out


def _overlaps(index: tuple[list[int], list[int]], lo: int, hi: int) -> bool:
    starts, ends = index
    i = bisect.bisect_right(starts, hi) - 1          # the last span starting at or before hi
    return i >= 0 and ends[i] >= lo


def kept_live(policy, live: Iterable[tuple[Net, str]]) -> dict[str, list[Net]]:
    """customer -> its live addresses, without any that overlap a static prefix or a wider
    (or equal, earlier) live one. Deterministic whatever the order of ``live``."""
    statics = _static_intervals(policy)
    # sorted by family, start, widest first, customer (a tuple that sorts so: no key function)
    items = sorted((fam, value, -_last(fam, value, plen), cid, (fam, value, plen)) for (fam, value, plen), cid in live)
    kept: dict[str, list[Net]] = {}
    reach = {4: -1, 6: -1}
    for fam, lo, neg_hi, cid, n in items:
        hi = -neg_hi
        if lo <= reach[fam] or _overlaps(statics[fam], lo, hi):
            continue
        reach[fam] = hi
        kept.setdefault(cid, []).append(n)
    return kept


def live_by_customer(policy, live: Iterable[tuple[Net, str]]) -> dict[str, tuple[str, ...]]:
    """:func:`kept_live` with the addresses as text."""
    return _as_text(kept_live(policy, live))


def _as_text(kept: dict[str, list[Net]]) -> dict[str, tuple[str, ...]]:
    return {cid: tuple(net_text(n) for n in nets) for cid, nets in kept.items()}


def subjects_of(policy, view=None, live: list | None = None, kept: dict | None = None) -> tuple[Subject, ...]:
    """Every policy customer (with or without addresses now), then every customer known only
    from live sessions; sorted by id within each group. Without ``view``: static prefixes only.
    ``live`` is ``view.live_addresses()`` taken earlier (on the event loop, where sessions
    change), so the rest can run in a thread; ``kept``: :func:`kept_live` of it, if known."""
    if view is not None and live is None and kept is None:
        live = view.live_addresses()
    if view is None:
        live = {}
    else:
        live = _as_text(kept_live(policy, live) if kept is None else kept)
    out = []
    for c in sorted(policy.customers, key=lambda c: c.id):
        sub = view.get(c.id) if view is not None else None
        out.append(Subject(c.id, tuple(str(p) for p in c.prefixes) + live.pop(c.id, ()), c.plan,
                           c.public_safety, sub.rate_cap if sub is not None else None))
    for cid in sorted(live):
        sub = view.get(cid)
        out.append(Subject(cid, live[cid], None, False, sub.rate_cap if sub is not None else None))
    return tuple(out)
