"""The ``dns:`` section: upstream resolvers, block lists with their class and action, privacy."""

from __future__ import annotations

import ipaddress
import re
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
    system: bool = False            # the address came from /etc/resolv.conf
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
class CacheSettings:
    """``dns.cache``: the answer cache of upstream answers (docs/dns.md, "Answer cache")."""
    enabled: bool = True
    max_entries: int = 200_000
    max_bytes: int = 64 * 1024 * 1024
    max_ttl: float = 86400.0           # unbound cache-max-ttl
    min_ttl: float = 0.0               # unbound cache-min-ttl
    negative_max_ttl: float = 3600.0   # unbound cache-max-negative-ttl
    servfail_ttl: float = 5.0          # RFC 2308 7.1: at most 5 minutes; "briefly"
    serve_stale: float = 86400.0       # RFC 8767 max stale timer (1-3 days suggested); 0 = off
    stale_after: float = 1.8           # RFC 8767 client response timer
    prefetch: bool = True


@dataclass(frozen=True)
class DnsSettings:
    upstreams: tuple[Upstream, ...] = ()
    upstreams_system: bool = False        # `upstreams: system`: read from /etc/resolv.conf
    cache: CacheSettings = CacheSettings()
    lists: tuple[BlockList, ...] = ()
    unknown_clients: str = "protect"      # protect (mandatory+security) | mandatory-only | refuse
    detection_retention: float = 30 * 86400.0
    log_allowed: bool = False
    detections_interval: float = 60.0     # MQTT: aggregated detection counts every ... (Art. 45(5))
    limits: GuardLimits = field(default_factory=GuardLimits)   # hostile traffic (policy/dnsguard.py)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


def _upstream(o: Obj) -> Upstream:
    system = isinstance(getattr(o.node.value.get("address"), "value", None), str) and \
        o.node.value["address"].value.strip().lower() == "system"
    return Upstream(
        id=o.req("id", as_id),
        address=o.req("address", _first_system if system else as_hostport(53)),
        timeout=o.get("timeout", duration_range(0.01, 60.0), 2.0),
        system=system,
        loc=o.node.loc, locs=o.locs,
    )


def _first_system(node, _p=None) -> tuple[str, int]:
    """``address: system``: the first nameserver of /etc/resolv.conf."""
    return system_upstreams(node.loc)[0].address


RESOLV_CONF = "/etc/resolv.conf"
SYSTEM_TIMEOUT = 2.0


def system_upstreams(loc: Loc, path: str = RESOLV_CONF) -> tuple[Upstream, ...]:
    """The ``nameserver`` lines of resolv.conf (at most 3, as the C library reads them)."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError as exc:
        raise Invalid(f"'system' reads {path}: {exc.strerror or exc}") from None
    out: list[Upstream] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(parts[1].split("%", 1)[0])
        except ValueError:
            continue
        out.append(Upstream(id=f"system-{len(out) + 1}", address=(str(ip), 53), timeout=SYSTEM_TIMEOUT,
                            system=True, loc=loc))
        if len(out) == 3:
            break
    if not out:
        raise Invalid(f"'system': {path} names no usable nameserver; list the upstreams instead")
    return tuple(out)


def _upstreams(node, problems) -> tuple[Upstream, ...]:
    if isinstance(node.value, str):
        if node.value.strip().lower() != "system":
            raise Invalid(f"{node.value!r}: expected a list of upstreams or 'system' (the resolvers "
                          f"of {RESOLV_CONF})")
        return system_upstreams(node.loc)
    return list_of(obj(_upstream))(node, problems)


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb|kib|mib|gib)?\s*$", re.I)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def as_size(node, _p=None) -> int:
    """A size in bytes: ``67108864``, ``64MiB``, ``100MB``."""
    v = node.value
    m = _SIZE.match(str(v)) if isinstance(v, (str, int)) and not isinstance(v, bool) else None
    if not m:
        raise Invalid(f"{v!r} is not a size (examples: 64MiB, 100MB, 1GiB)")
    n = int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower() or None]
    if not 64 * 1024 <= n <= 64 * 2**30:
        raise Invalid(f"{v!r} is outside 64KiB..64GiB")
    return n


def _cache(o: Obj) -> CacheSettings:
    d = CacheSettings()
    return CacheSettings(
        enabled=o.get("enabled", as_bool, d.enabled),
        max_entries=o.get("max_entries", int_range(1, 50_000_000), d.max_entries),
        max_bytes=o.get("max_bytes", as_size, d.max_bytes),
        max_ttl=o.get("max_ttl", as_duration, d.max_ttl),
        min_ttl=o.get("min_ttl", as_duration, d.min_ttl),
        negative_max_ttl=o.get("negative_max_ttl", as_duration, d.negative_max_ttl),
        servfail_ttl=o.get("servfail_ttl", _servfail_ttl, d.servfail_ttl),
        serve_stale=o.get("serve_stale", as_duration, d.serve_stale),
        stale_after=o.get("stale_after", _stale_after, d.stale_after),
        prefetch=o.get("prefetch", as_bool, d.prefetch),
    )


def _servfail_ttl(node, _p=None) -> float:
    v = as_duration(node)
    if v > 300:
        raise Invalid(f"{node.value!r}: RFC 2308 allows SERVFAIL to be cached 5 minutes at most")
    return v


def _stale_after(node, _p=None) -> float:
    v = as_duration(node)
    if not 0.05 <= v <= 30:
        raise Invalid(f"{node.value!r} is outside 50ms..30s")
    return v


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
        upstreams=o.get("upstreams", _upstreams, ()) or (),
        upstreams_system=isinstance(getattr(o.node.value.get("upstreams"), "value", None), str),
        cache=o.get("cache", obj(_cache), None) or CacheSettings(),
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
