"""The enforcement plan: a pure function of the policy and the emergency in force.

A :class:`Plan` says everything the kernel must hold, and nothing about how to
put it there (see render.py and apply.py). It has two parts:

* a static HTB tree per shaped interface, built from the policy alone: a root
  class at link rate, network control (never starved), priority (guaranteed
  ``priority_share`` of the link), ordinary (the rest, at least ``ordinary_floor``)
  with a default leaf and one leaf per customer cap (normal caps from plans and,
  where tighter, emergency caps from profiles);
* nftables sets and maps that classify packets into those classes with
  ``meta priority set``: customer prefix -> cap class (normal and emergency maps),
  priority prefixes, trusted DSCP sources, the interfaces an emergency covers.

An emergency therefore changes nft sets and maps only (one atomic ``nft -f``);
the tc tree changes only when the policy does.

Class ids are ``1:<minor>`` with the minor in hex, identical on every interface,
so one ``meta priority`` value is right whatever the outgoing interface.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import EnforcementError
from .subjects import Subject, subjects_of
from .upload import MAX_UP_PREFIXES, Upload, ifb_name

LINK, NETCTL, PRIORITY, ORDINARY, DEFAULT = 0x1, 0x10, 0x20, 0x30, 0x31
FIRST_CUSTOMER_CLASS = 0x100
MAX_MINOR = 0xFFFF
MIN_RATE = 8_000                 # 8 kbit/s: the smallest guarantee we give a class
NETCTL_SHARE = 0.05              # network control: 5% of the link guaranteed...
NETCTL_MIN, NETCTL_MAX = 256_000, 50_000_000   # ...but at least 256 kbit/s and at most 50 Mbit/s

# (l4 protocol, port) pairs per network-control service; icmp/ospf are matched by protocol.
NETCTL_PORTS = {
    "dns": (("udp", 53), ("tcp", 53)),
    "ntp": (("udp", 123),),
    "bgp": (("tcp", 179),),
    "dhcp": (("udp", 67), ("udp", 68), ("udp", 546), ("udp", 547)),
    "ssh": (("tcp", 22),),
}
NETCTL_PROTOCOLS = {"icmp": ("icmp", "ipv6-icmp"), "ospf": ("89",)}


@dataclass(frozen=True)
class HtbClass:
    minor: int           # classid 1:<minor>
    parent: int          # 0: the root qdisc 1:, else 1:<parent>
    name: str            # link, network-control, priority, ordinary, default, cap:<customer>, ecap:<customer>
    rate: int            # guaranteed bit/s
    ceil: int            # bit/s it may borrow up to
    prio: int            # HTB priority for spare capacity (0 first)
    leaf: bool


@dataclass(frozen=True)
class InterfaceTree:
    name: str
    rate: int
    classes: tuple[HtbClass, ...]

    @property
    def default(self) -> int:
        return DEFAULT


@dataclass(frozen=True)
class Entry:
    """One prefix in a set or map, with the class it maps to (maps) and where it came from."""

    prefix: str
    minor: int = 0
    note: str = ""


@dataclass(frozen=True)
class EmergencyPlan:
    profile: str
    category: str
    scope: tuple[str, ...]                 # interfaces the emergency covers
    priority: tuple[Entry, ...]            # prefixes whose traffic (either direction) is priority
    dscp_values: tuple[int, ...] = ()
    dscp_sources: tuple[Entry, ...] = ()   # DSCP honoured only from these source prefixes
    caps: tuple[Entry, ...] = ()           # customer prefix -> class during the emergency


@dataclass(frozen=True)
class Plan:
    leaf: str                              # leaf qdisc kind (pfifo, sfq, fq_codel)
    interfaces: tuple[InterfaceTree, ...]
    network_control: tuple[str, ...]
    caps: tuple[Entry, ...]                # customer prefix -> class, normal times
    emergency: EmergencyPlan | None = None
    class_names: dict = field(default_factory=dict, compare=False, repr=False)
    uploads: tuple[Upload, ...] = ()       # upload shaping: one ifb tree per interface (upload.py)
    up_caps: tuple[Entry, ...] = ()        # customer source prefix -> upload class (u32 filters)
    redirect: str = ""                     # ingress -> ifb classifier: matchall | u32 ("" without uploads)

    def tc_part(self) -> tuple:
        """What the tc tree depends on: equal parts mean no tc command is needed."""
        return (self.leaf, self.interfaces, self.uploads, self.up_caps, self.redirect)

    def names(self) -> dict[int, str]:
        """class minor -> class name of the download trees (customer classes included)."""
        if not self.class_names:
            out = {}
            for t in self.interfaces:
                for c in t.classes:
                    out[c.minor] = c.name
            object.__setattr__(self, "class_names", out)
        return self.class_names


@dataclass(frozen=True)
class Emergency:
    """What an operator declared (the state kept in the store)."""

    profile: str
    scope: tuple[str, ...] = ()            # interface names; empty = every shaped interface
    reason: str = ""


# -- building ------------------------------------------------------------------


def emergency_cap(profile, plan) -> int | None:
    """The per-customer cap during an emergency: the lower of the profile's and the plan's."""
    caps = [c for c in (getattr(profile, "customer_cap", None), getattr(plan, "emergency_down", None)) if c]
    return min(caps) if caps else None


def _lower(cap: int | None, override: int | None) -> int | None:
    caps = [c for c in (cap, override) if c]
    return min(caps) if caps else None


def _customer_caps(policy, subjects: tuple[Subject, ...]) -> dict[str, dict]:
    """customer id -> {"normal": cap|None, profile id: cap|None} for every subject (a runtime
    ``rate_cap`` lowers every cap: the lower of it and the plan's applies)."""
    out = {}
    shared: dict[tuple, dict] = {}       # (plan, rate_cap) -> its caps: one read-only dict each
    for s in subjects:
        caps = shared.get((s.plan, s.rate_cap))
        if caps is None:
            plan = policy.plans_by_id.get(s.plan) if s.plan else None
            down = plan.down if plan else None
            caps = {"normal": _lower(down, s.rate_cap)}
            for p in policy.profiles:
                caps[p.id] = _lower(emergency_cap(p, plan) or down, s.rate_cap)
            shared[(s.plan, s.rate_cap)] = caps
        out[s.customer] = caps
    return out


def _shares(policy, link: int) -> tuple[int, int, int]:
    """(network control, priority, ordinary) guaranteed rates for a link."""
    netctl = int(min(max(link * NETCTL_SHARE, NETCTL_MIN), NETCTL_MAX, link / 4))
    share = max((p.priority_share for p in policy.profiles), default=0.0)
    floor = max((p.ordinary_floor for p in policy.profiles), default=0.0)
    priority = int(link * share)
    ordinary = link - netctl - priority
    if ordinary < link * floor:            # the floor wins over the priority share
        ordinary = int(link * floor)
        priority = max(MIN_RATE, link - netctl - ordinary)
    return netctl, max(priority, MIN_RATE), max(ordinary, MIN_RATE)


MAX_CAP_CLASSES = MAX_MINOR - FIRST_CUSTOMER_CLASS      # 65279: class ids 1:100..1:fffe


class TooManyClasses(EnforcementError):
    """More customer cap classes than HTB has ids for: more present customers keep it so
    (qos/untouched.py skips re-renders that can only add some)."""


def cap_classes(policy, caps_by_customer: dict, present: set,
                previous: dict | None = None) -> tuple[dict[tuple[str, int], int], list[tuple[str, int, int]], int]:
    """A class minor for every distinct (customer, cap) of the customers ``present`` (holding an
    address now): returns the index, the list and how many pairs the policy could need at once
    (every customer's, with or without addresses: the per-class guarantee is shared by that
    many, so it does not move when sessions come and go).

    ``previous`` (the index of the plan in force) keeps the minors of pairs that stay, so a
    session starting or ending adds or removes one class and renumbers none; new pairs take the
    lowest free minors. Without it minors are given in customer order (the golden files).
    Raises EnforcementError past :data:`MAX_CAP_CLASSES`."""
    top = max((i.rate for i in policy.interfaces), default=0)
    wanted: list[tuple[str, int]] = []
    planned = 0
    below: dict[int, list[int]] = {}     # id(caps) -> its distinct caps below top (caps are shared)
    for cid, caps in caps_by_customer.items():
        mine = below.get(id(caps))
        if mine is None:
            # no cap, or a cap no link can reach: the default class is enough
            mine = below[id(caps)] = list(dict.fromkeys(c for c in caps.values() if c is not None and c < top))
        planned += len(mine)
        if cid in present:
            wanted += [(cid, cap) for cap in mine]
    if len(wanted) > MAX_CAP_CLASSES:
        raise _too_many(len(wanted))
    prev = previous or {}
    index = {k: prev[k] for k in wanted if k in prev}
    used = set(index.values())
    free = (m for m in range(FIRST_CUSTOMER_CLASS, MAX_MINOR) if m not in used)
    for k in wanted:
        if k not in index:
            index[k] = next(free)
    return index, [(cid, cap, index[(cid, cap)]) for cid, cap in wanted], planned


def _too_many(n: int) -> TooManyClasses:
    return TooManyClasses(f"too many customer cap classes: {n} needed, HTB allows "
                          f"{MAX_CAP_CLASSES} (class ids 1:{FIRST_CUSTOMER_CLASS:x}..1:{MAX_MINOR - 1:x})")


def classes_needed(policy, plan_id: str | None, rate_cap: int | None, top: int) -> tuple[int, bool]:
    """The download cap classes (distinct caps below ``top``, the fastest shaped link) and
    whether an upload cap class, that a customer on ``plan_id`` with runtime ``rate_cap`` needs."""
    caps = _customer_caps(policy, (Subject("", (), plan_id, False, rate_cap),))[""]
    plan = policy.plans_by_id.get(plan_id) if plan_id else None
    up = _lower(plan.up if plan else None, rate_cap)
    return len({c for c in caps.values() if c is not None and c < top}), up is not None and up < top


def check_class_limit(policy, view, kept: dict, uploads: bool) -> None:
    """Raise what :func:`build_static` would raise past the class limit (download caps, then
    upload caps when ``uploads``) for the subjects of ``(policy, view)`` with live addresses
    ``kept`` (:func:`subjects.kept_live`), counted without building them: with a million
    sessions restored, a re-render over the limit fails in a fraction of its time."""
    if (len(policy.customers) + len(kept)) * (1 + len(policy.profiles)) <= MAX_CAP_CLASSES:
        return       # a customer has at most a normal and one cap per profile: cannot be over
    top = max((i.rate for i in policy.interfaces), default=0)
    memo: dict[tuple, tuple[int, int]] = {}

    def pairs(plan_id: str | None, cid: str) -> tuple[int, int]:
        sub = view.get(cid)
        key = (plan_id, sub.rate_cap if sub is not None else None)
        got = memo.get(key)
        if got is None:
            d, u = classes_needed(policy, plan_id, key[1], top)
            got = memo[key] = (d, int(u))
        return got
    down = up = 0
    for c in policy.customers:
        if c.prefixes or c.id in kept:
            d, u = pairs(c.plan, c.id)
            down, up = down + d, up + u
    ids = policy.customers_by_id
    for cid in kept:
        if cid not in ids:
            d, u = pairs(None, cid)
            down, up = down + d, up + u
    for n in (down, up) if uploads else (down,):
        if n > MAX_CAP_CLASSES:
            raise _too_many(n)


def build_tree(policy, iface, order: list[tuple[str, int, int]], first: dict, shared_by: int = 0) -> InterfaceTree:
    link = iface.rate
    netctl, priority, ordinary = _shares(policy, link)
    n = max(1, shared_by or len(order))
    per_customer = max(MIN_RATE, (ordinary // 2) // n)
    classes = [
        HtbClass(LINK, 0, "link", link, link, 0, False),
        HtbClass(NETCTL, LINK, "network-control", netctl, link, 0, True),
        HtbClass(PRIORITY, LINK, "priority", priority, link, 1, True),
        HtbClass(ORDINARY, LINK, "ordinary", ordinary, link, 2, False),
        HtbClass(DEFAULT, ORDINARY, "default", max(MIN_RATE, ordinary // 2), link, 2, True),
    ]
    for cid, cap, minor in order:
        kind = "cap" if first.get(cid) == minor else "ecap"
        ceil = min(cap, link)
        classes.append(HtbClass(minor, ORDINARY, f"{kind}:{cid}", min(per_customer, ceil), ceil, 2, True))
    return InterfaceTree(iface.name, link, tuple(classes))


def _entries(prefixes, minor: int, note: str) -> list[Entry]:
    return [Entry(str(p), minor, note) for p in prefixes]


@dataclass(frozen=True)
class Static:
    """The part of a plan that depends on the policy and the subjects only (reuse it for every emergency)."""

    trees: tuple[InterfaceTree, ...]
    network_control: tuple[str, ...]
    index: dict
    caps_by_customer: dict
    normal_caps: tuple[Entry, ...]
    subjects: tuple[Subject, ...] = ()
    uploads: tuple[Upload, ...] = ()
    up_caps: tuple[Entry, ...] = ()
    up_index: dict = field(default_factory=dict)
    redirect: str = ""
    up_dropped: int = 0                    # addresses past the u32 list limit: no upload cap


def build_static(policy, subjects: tuple[Subject, ...] | None = None, previous: Static | None = None,
                 redirect: str | None = None) -> Static:
    """``subjects`` default to the policy's customers and static prefixes; ``previous`` (the
    Static in force) keeps class ids stable (see :func:`cap_classes`); ``redirect`` (matchall or
    u32: what the kernel has) shapes uploads too, None leaves them alone."""
    subjects = subjects_of(policy) if subjects is None else subjects
    caps_by_customer = _customer_caps(policy, subjects)
    present = {s.customer for s in subjects if s.prefixes}
    index, order, shared_by = cap_classes(policy, caps_by_customer, present,
                                          previous.index if previous is not None else None)
    first = {}
    for cid, caps in caps_by_customer.items():
        if caps["normal"] is not None and (cid, caps["normal"]) in index:
            first[cid] = index[(cid, caps["normal"])]
    trees = tuple(build_tree(policy, i, order, first, shared_by) for i in policy.interfaces)
    netctl = tuple(sorted({s for p in policy.profiles for s in p.network_control} or {"dns", "ntp", "bgp"}))
    st = Static(trees, netctl, index, caps_by_customer, (), subjects)
    st = dataclasses.replace(st, normal_caps=_cap_entries(st, "normal"))
    if redirect:
        st = _with_uploads(policy, st, previous, redirect)
    return st


def _with_uploads(policy, st: Static, previous: Static | None, redirect: str) -> Static:
    """``st`` with upload shaping: an ifb tree per interface with a class per customer ``up``
    cap (the lower of the plan's ``up`` and a runtime ``rate_cap``), and the filters."""
    up, shared = {}, {}            # (plan, rate_cap) -> its caps: one read-only dict each
    for s in st.subjects:
        caps = shared.get((s.plan, s.rate_cap))
        if caps is None:
            plan = policy.plans_by_id.get(s.plan) if s.plan else None
            caps = shared[(s.plan, s.rate_cap)] = {"up": _lower(plan.up if plan else None, s.rate_cap)}
        up[s.customer] = caps
    present = {s.customer for s in st.subjects if s.prefixes}
    index, order, shared_by = cap_classes(policy, up, present, previous.up_index if previous is not None else None)
    if not order:
        return st                  # no up cap below a link rate: nothing to shape
    entries, dropped = _up_entries(policy, st.subjects, up, index)
    uploads = tuple(upload_tree(i, order, shared_by) for i in policy.interfaces)
    return dataclasses.replace(st, uploads=uploads, up_caps=entries, up_index=index, redirect=redirect,
                               up_dropped=dropped)


def _up_entries(policy, subjects, up: dict, index: dict) -> tuple[tuple[Entry, ...], int]:
    """The source filters, static prefixes first, then live addresses, at most
    :data:`MAX_UP_PREFIXES` per family (the u32 list is linear); returns them and how many
    addresses were left without an upload cap (they fall into the default class)."""
    static = {str(p) for c in policy.customers for p in c.prefixes}
    entries = [Entry(p, index[(s.customer, up[s.customer]["up"])], f"customer {s.customer}")
               for s in subjects if (s.customer, up[s.customer]["up"]) in index for p in s.prefixes]
    entries.sort(key=lambda e: e.prefix not in static)           # stable: static first, order kept
    kept, count = [], {4: 0, 6: 0}
    for e in entries:
        fam = family(e.prefix)
        if count[fam] < MAX_UP_PREFIXES:
            count[fam] += 1
            kept.append(e)
    return tuple(kept), len(entries) - len(kept)


def upload_tree(iface, order: list[tuple[str, int, int]], shared_by: int) -> Upload:
    """The ifb tree for uploads arriving on ``iface``: link, default, a class per up cap."""
    link = iface.rate
    per_customer = max(MIN_RATE, (link // 2) // max(1, shared_by))
    classes = [HtbClass(LINK, 0, "link", link, link, 0, False),
               HtbClass(DEFAULT, LINK, "default", max(MIN_RATE, link // 2), link, 2, True)]
    for cid, cap, minor in order:
        ceil = min(cap, link)
        classes.append(HtbClass(minor, LINK, f"up:{cid}", min(per_customer, ceil), ceil, 2, True))
    ifb = ifb_name(iface.name)
    return Upload(iface.name, ifb, InterfaceTree(ifb, link, tuple(classes)))


def _cap_entries(st: Static, key: str) -> tuple[Entry, ...]:
    out = []
    for s in st.subjects:
        cap = st.caps_by_customer.get(s.customer, {}).get(key)
        minor = st.index.get((s.customer, cap), DEFAULT) if cap is not None else DEFAULT
        if minor != DEFAULT:
            out.extend(Entry(p, minor, f"customer {s.customer}") for p in s.prefixes)
    return tuple(out)


def build_plan(policy, emergency: Emergency | None = None, *, leaf: str = "pfifo",
               static: Static | None = None, subjects: tuple[Subject, ...] | None = None,
               redirect: str | None = None) -> Plan:
    """(Policy, subjects, the emergency in force) -> Plan. Pure; raises ValueError for an unknown
    profile/scope, EnforcementError past the class limit.

    ``subjects`` (:func:`subjects.subjects_of` of the policy and the subscriber view) default to
    the policy's customers with their static prefixes. ``static`` (from :func:`build_static` of
    the same policy and subjects) saves rebuilding the tc tree.
    """
    st = static or build_static(policy, subjects, redirect=redirect)
    em = _emergency_plan(policy, st, emergency) if emergency is not None else None
    return Plan(leaf=leaf, interfaces=st.trees, network_control=st.network_control, caps=st.normal_caps,
                emergency=em, uploads=st.uploads, up_caps=st.up_caps, redirect=st.redirect)


def _emergency_plan(policy, st: Static, emergency: Emergency) -> EmergencyPlan:
    profile = policy.profiles_by_id.get(emergency.profile)
    if profile is None:
        raise ValueError(f"unknown emergency profile {emergency.profile!r} "
                         f"(known: {', '.join(sorted(policy.profiles_by_id)) or 'none'})")
    shaped = [i.name for i in policy.interfaces]
    unknown = [s for s in emergency.scope if s not in shaped]
    if unknown:
        raise ValueError(f"scope names interfaces the policy does not shape: {', '.join(unknown)} "
                         f"(shaped: {', '.join(shaped) or 'none'})")
    held = {s.customer: s.prefixes for s in st.subjects}     # static and live addresses
    prio: list[Entry] = []
    for cid in profile.priority_customers:
        prio.extend(_entries(held.get(cid, ()), PRIORITY, f"customer {cid}"))
    for c in policy.customers:
        if c.public_safety and c.id not in profile.priority_customers:
            prio.extend(_entries(held.get(c.id, ()), PRIORITY, f"customer {c.id} (public_safety)"))
    for d in profile.priority_destinations:
        prio.append(Entry(str(d.prefix), PRIORITY, d.note))
    dscp_src: list[Entry] = []
    for cid in profile.trusted_dscp.customers:
        dscp_src.extend(_entries(held.get(cid, ()), PRIORITY, f"customer {cid}"))
    dscp_src.extend(_entries(profile.trusted_dscp.prefixes, PRIORITY, "trusted DSCP source"))
    return EmergencyPlan(
        profile=profile.id, category=profile.category,
        scope=tuple(emergency.scope) or tuple(shaped),
        priority=tuple(_dedupe(prio)),
        dscp_values=tuple(sorted(profile.trusted_dscp.values)),
        dscp_sources=tuple(_dedupe(dscp_src)) if profile.trusted_dscp.values else (),
        caps=_cap_entries(st, profile.id),
    )


def _dedupe(entries: list[Entry]) -> list[Entry]:
    """One entry per prefix (first note wins); prefixes covered by a wider one are kept (intervals merge)."""
    seen, out = set(), []
    for e in entries:
        if e.prefix not in seen:
            seen.add(e.prefix)
            out.append(e)
    return out


def family(prefix: str) -> int:
    """4 or 6 for a prefix string the plan holds (already validated)."""
    return 6 if ":" in prefix else 4
