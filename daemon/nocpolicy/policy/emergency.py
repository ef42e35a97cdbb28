"""Emergency profiles (Art. 23(1)) and the interfaces nocpolicy shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .customers import Prefix
from .fields import (
    Obj,
    as_fraction,
    as_id,
    as_prefix,
    as_rate,
    as_str,
    as_text,
    duration_range,
    int_range,
    list_of,
    obj,
    one_of,
)
from .nodes import Loc

# Telecommunications Business Act art. 8 purposes named in Art. 23(1).
CATEGORIES = ("disaster-relief", "transport", "communications", "power", "public-order", "other-public-interest")
NETWORK_CONTROL = ("dns", "ntp", "bgp", "ospf", "icmp", "dhcp", "ssh")


@dataclass(frozen=True)
class PriorityDestination:
    prefix: Prefix
    note: str                   # where the prefix came from (agency, utility, document)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class TrustedDscp:
    values: tuple[int, ...] = ()
    customers: tuple[str, ...] = ()       # DSCP honoured only from these customers...
    prefixes: tuple[Prefix, ...] = ()     # ...or these source prefixes
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Profile:
    id: str
    category: str
    description: str = ""
    priority_customers: tuple[str, ...] = ()
    priority_destinations: tuple[PriorityDestination, ...] = ()
    trusted_dscp: TrustedDscp = TrustedDscp()
    priority_share: float = 0.5     # fraction of each link guaranteed to priority traffic
    ordinary_floor: float = 0.2     # fraction ordinary traffic always keeps
    customer_cap: int | None = None  # per-customer cap during the emergency (bit/s); plan's emergency_down wins when lower
    network_control: tuple[str, ...] = ("dns", "ntp", "bgp")
    max_duration: float | None = None
    priority_locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Interface:
    name: str
    rate: int                   # link rate (bit/s) used as the HTB root
    direction: str = "egress"   # shaped direction: egress towards customers
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @property
    def id(self) -> str:
        return self.name


def _dest(o: Obj) -> PriorityDestination:
    return PriorityDestination(prefix=o.req("prefix", as_prefix), note=o.req("note", as_text), loc=o.node.loc)


def _dscp(o: Obj) -> TrustedDscp:
    return TrustedDscp(
        values=o.get("values", list_of(int_range(0, 63), unique=True), ()) or (),
        customers=o.get("customers", list_of(as_id, unique=True), ()) or (),
        prefixes=o.get("prefixes", list_of(as_prefix, unique=True), ()) or (),
        locs=o.locs,
    )


def _priority(o: Obj) -> dict:
    return {
        "priority_customers": o.get("customers", list_of(as_id, unique=True), ()) or (),
        "priority_destinations": o.get("destinations", list_of(obj(_dest)), ()) or (),
        "trusted_dscp": o.get("dscp", obj(_dscp), TrustedDscp()) or TrustedDscp(),
        "priority_locs": o.locs,
    }


def _profile(o: Obj) -> Profile:
    prio = o.get("priority", obj(_priority), {}) or {}
    p = Profile(
        id=o.req("id", as_id),
        category=o.req("category", one_of(*CATEGORIES)),
        description=o.get("description", as_str, "") or "",
        priority_share=o.get("priority_share", as_fraction, 0.5),
        ordinary_floor=o.get("ordinary_floor", as_fraction, 0.2),
        customer_cap=o.get("customer_cap", as_rate, None),
        network_control=o.get("network_control", list_of(one_of(*NETWORK_CONTROL), unique=True),
                              ("dns", "ntp", "bgp")),
        max_duration=o.get("max_duration", duration_range(60.0, 90 * 86400.0), None),
        loc=o.node.loc, locs=o.locs,
        **prio,
    )
    if p.priority_share is not None and p.ordinary_floor is not None and p.priority_share + p.ordinary_floor > 1:
        o.problems.add(o.locs.get("ordinary_floor", o.node.loc), f"{o.node.path}.ordinary_floor",
                       f"priority_share ({p.priority_share:.0%}) + ordinary_floor ({p.ordinary_floor:.0%}) exceed 100%")
    return p


def _interface(o: Obj) -> Interface:
    return Interface(
        name=o.req("name", _ifname),
        rate=o.req("rate", as_rate),
        direction=o.get("direction", one_of("egress"), "egress"),
        loc=o.node.loc, locs=o.locs,
    )


def _ifname(node, _p=None) -> str:
    from .fields import Invalid
    s = as_str(node)
    if not (0 < len(s) < 16) or "/" in s or any(c.isspace() for c in s):
        raise Invalid(f"{s!r} is not a Linux interface name (1-15 characters, no '/' or spaces)")
    return s


read_profiles = list_of(obj(_profile))
read_interfaces = list_of(obj(_interface))
