"""The ``dns:`` section: upstream resolvers, block lists with their class and action, privacy."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .dnsguard import GuardLimits, check_limits, read_limits
from .fields import (
    Invalid,
    Obj,
    as_bool,
    as_duration,
    as_fraction,
    as_hostport,
    as_id,
    as_ip,
    as_str,
    as_text,
    duration_range,
    int_range,
    list_of,
    obj,
    one_of,
    size_range,
)
from .nodes import Loc

LIST_CLASSES = ("mandatory", "security", "optional")
LIST_FORMATS = ("domains", "hosts", "rpz", "maltrail")
LIST_ACTIONS = ("nxdomain", "nodata", "refused", "sinkhole")


@dataclass(frozen=True)
class Upstream:
    id: str
    address: tuple[str, int]
    timeout: float = 2.0
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class BlockList:
    id: str
    cls: str                       # mandatory | security | optional
    format: str                    # domains | hosts | rpz | maltrail
    source: str                    # path relative to the policy dir, or http(s) URL
    action: str = "nxdomain"
    sinkhole_a: ipaddress.IPv4Address | None = None
    sinkhole_aaaa: ipaddress.IPv6Address | None = None
    refresh: float = 3600.0
    max_shrink: float = 0.5        # a refresh losing more than this fraction is refused
    allow: tuple[str, ...] = ()    # exceptions (names and their subdomains)
    description: str = ""
    max_size: int = 128 * 2**20    # bytes after gzip is undone; larger sources are refused
    max_entries: int = 5_000_000   # a source with more entries is refused
    fetch_timeout: float = 300.0   # overall deadline for one fetch (connect, redirects, body)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class DnsSettings:
    upstreams: tuple[Upstream, ...] = ()
    lists: tuple[BlockList, ...] = ()
    unknown_clients: str = "protect"      # protect (mandatory+security) | mandatory-only | refuse
    detection_retention: float = 30 * 86400.0
    log_allowed: bool = False
    detections_interval: float = 60.0     # MQTT: aggregated detection counts every ... (Art. 45(5))
    limits: GuardLimits = field(default_factory=GuardLimits)   # hostile traffic (policy/dnsguard.py)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


def _upstream(o: Obj) -> Upstream:
    return Upstream(
        id=o.req("id", as_id),
        address=o.req("address", as_hostport(53)),
        timeout=o.get("timeout", duration_range(0.01, 60.0), 2.0),
        loc=o.node.loc, locs=o.locs,
    )


def as_domain(node, _p=None) -> str:
    """A domain name, lower-cased, without the trailing dot."""
    s = as_str(node).strip().lower().rstrip(".")
    if not s or any(c.isspace() for c in s) or ".." in s:
        raise Invalid(f"{node.value!r} is not a domain name")
    return s


def _blocklist(o: Obj) -> BlockList:
    bl = BlockList(
        id=o.req("id", as_id),
        cls=o.req("class", one_of(*LIST_CLASSES)),
        format=o.get("format", one_of(*LIST_FORMATS), "domains"),
        source=o.req("source", as_text),
        action=o.get("action", one_of(*LIST_ACTIONS), "nxdomain"),
        sinkhole_a=o.get("sinkhole_a", as_ip, None),
        sinkhole_aaaa=o.get("sinkhole_aaaa", as_ip, None),
        refresh=o.get("refresh", duration_range(10.0, 30 * 86400.0), 3600.0),
        max_shrink=o.get("max_shrink", as_fraction, 0.5),
        allow=o.get("allow", list_of(as_domain, unique=True), ()) or (),
        description=o.get("description", as_str, "") or "",
        max_size=o.get("max_size", size_range(1024, 2**30), 128 * 2**20),
        max_entries=o.get("max_entries", int_range(1, 50_000_000), 5_000_000),
        fetch_timeout=o.get("fetch_timeout", duration_range(1.0, 3600.0), 300.0),
        loc=o.node.loc, locs=o.locs,
    )
    if bl.sinkhole_a is not None and bl.sinkhole_a.version != 4:
        o.problems.add(o.locs["sinkhole_a"], f"{o.node.path}.sinkhole_a", "must be an IPv4 address")
    if bl.sinkhole_aaaa is not None and bl.sinkhole_aaaa.version != 6:
        o.problems.add(o.locs["sinkhole_aaaa"], f"{o.node.path}.sinkhole_aaaa", "must be an IPv6 address")
    if bl.action == "sinkhole" and bl.sinkhole_a is None and bl.sinkhole_aaaa is None:
        o.problems.add(o.locs.get("action", o.node.loc), f"{o.node.path}.action",
                       "action sinkhole needs sinkhole_a and/or sinkhole_aaaa")
    return bl


def _dns(o: Obj) -> DnsSettings:
    d = _dns_settings(o)
    if d.log_allowed:
        o.problems.add(o.locs.get("log_allowed", o.node.loc), f"{o.node.path}.log_allowed",
                       "logging allowed queries is not supported: only blocks are logged (Art. 37); "
                       "remove the key or set it to false")
    check_limits(d.limits, d.detection_retention, o)
    return d


def _dns_settings(o: Obj) -> DnsSettings:
    return DnsSettings(
        upstreams=o.get("upstreams", list_of(obj(_upstream)), ()) or (),
        lists=o.get("lists", list_of(obj(_blocklist)), ()) or (),
        unknown_clients=o.get("unknown_clients", one_of("protect", "mandatory-only", "refuse"), "protect"),
        detection_retention=o.get("detection_retention", duration_range(3600.0, 400 * 86400.0), 30 * 86400.0),
        log_allowed=bool(o.get("log_allowed", as_bool, False)),
        detections_interval=o.get("detections_interval", _interval, 60.0),
        limits=read_limits(o),
        loc=o.node.loc, locs=o.locs,
    )


def _interval(node, _p=None) -> float:
    v = as_duration(node)
    if not 1.0 <= v <= 86400.0:
        raise Invalid(f"{node.value!r} is outside 1s..24h")
    return v


read_dns = obj(_dns)
