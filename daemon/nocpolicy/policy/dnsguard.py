"""The DNS guard's defences against hostile traffic (an infected customer, forged packets, oversized inputs): ``dns.ratelimit``,
``dns.access_control``, ``dns.tcp`` and ``dns.detection_log``.

Every value has a range; one outside it is refused with file:line (docs/policy.md).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .fields import Invalid, Obj, as_duration, as_id, as_prefix, int_range, list_of, obj

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RateLimit:
    """Per-source limits (unbound ip-ratelimit, dnsdist MaxQPSIPRule, BIND RRL slip)."""

    qps: int = 1000                 # queries per second per source prefix over UDP; 0: off
    blocked_qps: int = 500          # blocked answers per second per source prefix over UDP; 0: off
    slip: int = 2                   # every Nth limited query is answered TC=1; 0: drop them all
    ipv4_prefix: int = 32
    ipv6_prefix: int = 56
    exempt_tags: tuple[str, ...] = ("public-safety",)   # plus every customer with public_safety: true
    max_pending: int = 1000         # upstream queries in flight per source prefix
    kernel_qps: int = 0             # nftables meter behind the limit (dns/kernelmeter.py); 0: off
    kernel_burst: int = 0           # datagrams over kernel_qps let through in a burst; 0: kernel_qps


@dataclass(frozen=True)
class AccessControl:
    """Who may query besides loopback and the customers' prefixes (unbound access-control)."""

    allow: tuple[Prefix, ...] = ()  # subscriber address pools and other networks we serve


@dataclass(frozen=True)
class TcpLimits:
    max_connections: int = 512
    per_ip: int = 32                # connections from one address
    in_flight: int = 32             # queries of one connection waiting for their answer
    idle: float = 10.0


@dataclass(frozen=True)
class DetectionLogConf:
    interval: float = 3600.0        # rows aggregate per client, list and entry over this period
    per_client: int = 100           # rows per client pseudonym per interval
    per_interval: int = 20_000      # rows per interval, all clients together
    samples: int = 3                # query names kept per row
    store_max: int = 256 * 1024 * 1024   # bytes the state store may hold before old rows go
    key_rotation: float = 86400.0   # a new pseudonym key this often (shorter than the retention)


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B|B)?\s*$", re.I)
_UNIT = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 1024**2, "gb": 10**9, "gib": 1024**3}


def as_size(lo: int, hi: int):
    """Bytes: an integer or ``64MiB`` / ``1GB`` / ``512KiB``, inside lo..hi."""
    def conv(node, _p=None) -> int:
        v = node.value
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        else:
            m = _SIZE.match(str(v)) if isinstance(v, str) else None
            if m is None:
                raise Invalid(f"{v!r} is not a size (bytes, or e.g. 256MiB, 1GB)")
            n = int(m.group(1)[:20]) * _UNIT[(m.group(2) or "").lower()]
        if not lo <= n <= hi:
            raise Invalid(f"{v!r} is out of range {lo}..{hi} bytes")
        return n
    return conv


def duration_range(lo: float, hi: float):
    def conv(node, _p=None) -> float:
        v = as_duration(node)
        if not lo <= v <= hi:
            raise Invalid(f"{node.value!r} is outside {lo:g}s..{hi:g}s")
        return v
    return conv


def _ratelimit(o: Obj) -> RateLimit:
    d = RateLimit()
    qps = o.get("qps", int_range(0, 10_000_000), d.qps)
    return RateLimit(
        qps=qps,
        blocked_qps=o.get("blocked_qps", int_range(0, 10_000_000), d.blocked_qps),
        slip=o.get("slip", int_range(0, 10), d.slip),
        ipv4_prefix=o.get("ipv4_prefix", int_range(8, 32), d.ipv4_prefix),
        ipv6_prefix=o.get("ipv6_prefix", int_range(16, 128), d.ipv6_prefix),
        exempt_tags=o.get("exempt_tags", list_of(as_id, unique=True), d.exempt_tags) or (),
        max_pending=o.get("max_pending", int_range(1, 50_000), d.max_pending),
        kernel_qps=_kernel_qps(o, qps),
        kernel_burst=o.get("kernel_burst", int_range(0, 10_000_000), d.kernel_burst),
    )


def _kernel_qps(o: Obj, qps: int | None) -> int:
    """``kernel_qps``: 0 (off) or at least ``qps``: a backstop under the user-space limit would
    take over from it (no slip, no blocked-answer limit, nothing counted per query)."""
    k = o.get("kernel_qps", int_range(0, 10_000_000), 0)
    if k and qps and k < qps:
        o.problems.add(o.locs.get("kernel_qps", o.node.loc), f"{o.node.path}.kernel_qps",
                       f"must be 0 (off) or at least qps ({qps}): the kernel meter is a backstop "
                       "behind the per-source limit, not a replacement")
    return k or 0


def _access(o: Obj) -> AccessControl:
    return AccessControl(allow=o.get("allow", list_of(as_prefix), ()) or ())


def _tcp(o: Obj) -> TcpLimits:
    d = TcpLimits()
    return TcpLimits(
        max_connections=o.get("max_connections", int_range(1, 65_536), d.max_connections),
        per_ip=o.get("per_ip", int_range(1, 65_536), d.per_ip),
        in_flight=o.get("in_flight", int_range(1, 1024), d.in_flight),
        idle=o.get("idle", duration_range(1, 3600), d.idle),
    )


def _detlog(o: Obj) -> DetectionLogConf:
    d = DetectionLogConf()
    return DetectionLogConf(
        interval=o.get("interval", duration_range(1, 86400), d.interval),
        per_client=o.get("per_client", int_range(1, 1_000_000), d.per_client),
        per_interval=o.get("per_interval", int_range(1, 1_000_000), d.per_interval),
        samples=o.get("samples", int_range(0, 20), d.samples),
        store_max=o.get("store_max", as_size(1024 * 1024, 1 << 40), d.store_max),
        key_rotation=o.get("key_rotation", duration_range(60, 365 * 86400), d.key_rotation),
    )


@dataclass(frozen=True)
class GuardLimits:
    ratelimit: RateLimit = field(default_factory=RateLimit)
    access: AccessControl = field(default_factory=AccessControl)
    tcp: TcpLimits = field(default_factory=TcpLimits)
    detection_log: DetectionLogConf = field(default_factory=DetectionLogConf)
    max_udp_size: int = 1232        # a client's EDNS UDP size is clamped to this (what we advertise)


def read_limits(o: Obj) -> GuardLimits:
    """The four sections from the ``dns:`` mapping ``o`` (defaults where absent)."""
    return GuardLimits(
        ratelimit=o.get("ratelimit", obj(_ratelimit), None) or RateLimit(),
        access=o.get("access_control", obj(_access), None) or AccessControl(),
        tcp=o.get("tcp", obj(_tcp), None) or TcpLimits(),
        detection_log=o.get("detection_log", obj(_detlog), None) or DetectionLogConf(),
        max_udp_size=o.get("max_udp_size", int_range(512, 65535), 1232),
    )


def check_limits(g: GuardLimits, retention: float | None, o: Obj) -> None:
    """Cross-field rule: the pseudonym key must rotate within the retention period."""
    if retention is None or g.detection_log.key_rotation is None:
        return  # the field itself was refused and reported already
    if g.detection_log.key_rotation >= retention:
        o.problems.add(o.locs.get("detection_log", o.node.loc), f"{o.node.path}.detection_log.key_rotation",
                       f"must be shorter than dns.detection_retention ({retention:g}s): a key that outlives "
                       "the log lets every pseudonym in it be reversed")


__all__ = ["AccessControl", "DetectionLogConf", "GuardLimits", "RateLimit", "TcpLimits", "check_limits",
           "read_limits"]
