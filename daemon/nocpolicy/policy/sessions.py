"""The ``sessions:`` section: where dynamic subscriber sessions come from (RADIUS
accounting, Kea lease files), how a session names its customer, CGNAT port-block
pools for ``whois``, and how long session history is kept (docs/sessions.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .fields import (
    Invalid,
    Obj,
    Problems,
    as_duration,
    as_hostport,
    as_id,
    as_prefix,
    as_str,
    as_text,
    int_range,
    list_of,
    obj,
)
from .nodes import Loc

RADIUS_ATTRIBUTES = ("User-Name", "Class", "Calling-Station-Id")
KEA_ATTRIBUTES = ("hostname", "client_id", "hwaddr", "duid")
DEFAULT_RETENTION = 180 * 86400.0     # 6 months: the upper end of what Japanese ISPs keep
Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class CustomerFrom:
    """Which attribute of a session names its customer, and the regex that extracts the id."""

    attribute: str
    regex: re.Pattern | None = None     # group "id" (or group 1, or the whole match)

    def extract(self, value: str | None) -> str | None:
        if not value:
            return None
        if self.regex is None:
            return value
        m = self.regex.search(value)
        if m is None:
            return None
        if "id" in self.regex.groupindex:
            return m.group("id") or None
        return (m.group(1) if self.regex.groups else m.group(0)) or None


@dataclass(frozen=True)
class RadiusClient:
    id: str
    prefix: Prefix
    secret_file: str
    secret: bytes = field(default=b"", repr=False, compare=False)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class RadiusSettings:
    listen: tuple[str, int] = ("127.0.0.1", 1813)
    clients: tuple[RadiusClient, ...] = ()
    customer_from: CustomerFrom = CustomerFrom("User-Name")
    interim_interval: float = 300.0     # when the NAS sends no Acct-Interim-Interval
    stale_grace: float = 600.0
    commit_delay: float = 0.003         # group commit: gather requests this long
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class KeaFile:
    path: str
    customer_from: CustomerFrom = CustomerFrom("hostname")
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class NatPool:
    """RFC 7422 deterministic CGNAT: internal host k gets ports ``first + (k % per) * size``
    (``per`` blocks per public address) on public address ``k // per``."""

    id: str
    public: Prefix
    internal: Prefix
    first_port: int = 1024
    last_port: int = 65535
    block_size: int = 1024
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)

    @property
    def blocks_per_address(self) -> int:
        return (self.last_port - self.first_port + 1) // self.block_size


@dataclass(frozen=True)
class SessionSettings:
    radius: RadiusSettings | None = None
    kea: tuple[KeaFile, ...] = ()
    nat_pools: tuple[NatPool, ...] = ()
    retention: float = DEFAULT_RETENTION
    max_active: int = 2_000_000          # live sessions kept at most (bounded table)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.radius is not None or bool(self.kea)


def _regex(node, _p=None) -> re.Pattern:
    s = as_str(node)
    try:
        return re.compile(s)
    except re.error as exc:
        raise Invalid(f"{s!r} is not a regular expression: {exc}") from None


def _choice(choices: tuple[str, ...]):
    """One of ``choices``, case-insensitively, returned as spelled in ``choices``."""
    def conv(node, _p=None) -> str:
        s = as_str(node).strip()
        for c in choices:
            if c.lower() == s.lower():
                return c
        raise Invalid(f"{s!r} is not one of: {', '.join(choices)}")
    return conv


def _customer_from(attributes: tuple[str, ...], default: str):
    def read(o: Obj) -> CustomerFrom:
        return CustomerFrom(attribute=o.get("attribute", _choice(attributes), default) or default,
                            regex=o.get("regex", _regex, None))
    return obj(read)


def _client(o: Obj) -> RadiusClient:
    return RadiusClient(id=o.req("id", as_id), prefix=o.req("address", _net),
                        secret_file=o.req("secret_file", as_text), loc=o.node.loc)


def _net(node, _p=None) -> Prefix:
    s = as_str(node).strip()
    if "/" not in s:
        try:
            return ipaddress.ip_network(s)
        except ValueError:
            raise Invalid(f"{s!r} is not an address or prefix") from None
    return as_prefix(node)


def _radius(o: Obj) -> RadiusSettings:
    d = RadiusSettings()
    return RadiusSettings(
        listen=o.get("listen", as_hostport(1813), d.listen) or d.listen,
        clients=o.get("clients", list_of(obj(_client), min_items=1), ()) or (),
        customer_from=o.get("customer_from", _customer_from(RADIUS_ATTRIBUTES, "User-Name"),
                            d.customer_from) or d.customer_from,
        interim_interval=o.get("interim_interval", as_duration, d.interim_interval) or d.interim_interval,
        stale_grace=o.get("stale_grace", as_duration, d.stale_grace) or d.stale_grace,
        commit_delay=o.get("commit_delay", as_duration, d.commit_delay) or d.commit_delay,
        loc=o.node.loc,
    )


def _kea(o: Obj) -> KeaFile:
    return KeaFile(path=o.req("path", as_text),
                   customer_from=o.get("customer_from", _customer_from(KEA_ATTRIBUTES, "hostname"),
                                       CustomerFrom("hostname")) or CustomerFrom("hostname"),
                   loc=o.node.loc)


def _ports(node, _p=None) -> tuple[int, int]:
    s = as_str(node).strip()
    m = re.fullmatch(r"(\d+)-(\d+)", s)
    if not m or not 1 <= int(m[1]) <= int(m[2]) <= 65535:
        raise Invalid(f"{s!r} is not a port range like 1024-65535")
    return int(m[1]), int(m[2])


def _pool(o: Obj) -> NatPool:
    first, last = o.get("ports", _ports, (1024, 65535)) or (1024, 65535)
    pool = NatPool(id=o.req("id", as_id), public=o.req("public", as_prefix),
                   internal=o.req("internal", as_prefix), first_port=first, last_port=last,
                   block_size=o.get("block_size", int_range(1, 65535), 1024) or 1024, loc=o.node.loc)
    if pool.public is None or pool.internal is None:
        return pool
    where = o.node.path
    if pool.public.version != 4 or pool.internal.version != 4:
        o.problems.add(o.node, where, "NAT pools map IPv4 to IPv4")
    elif pool.blocks_per_address < 1:
        o.problems.add(o.node, f"{where}.block_size", f"{pool.block_size} ports do not fit in {first}-{last}")
    elif pool.internal.num_addresses > pool.public.num_addresses * pool.blocks_per_address:
        o.problems.add(o.node, where, f"{pool.internal.num_addresses} internal addresses need more blocks "
                       f"than {pool.public.num_addresses} public addresses x {pool.blocks_per_address} "
                       f"blocks of {pool.block_size} ports")
    return pool


def _sessions(o: Obj) -> SessionSettings:
    d = SessionSettings()
    s = SessionSettings(
        radius=o.get("radius", obj(_radius), None),
        kea=o.get("kea", list_of(obj(_kea)), ()) or (),
        nat_pools=o.get("nat_pools", list_of(obj(_pool)), ()) or (),
        retention=o.get("retention", as_duration, d.retention) or d.retention,
        max_active=o.get("max_active", int_range(1, 50_000_000), d.max_active) or d.max_active,
        loc=o.node.loc,
    )
    if s.retention < 86400:
        o.problems.add(o.locs.get("retention", o.node.loc), f"{o.node.path}.retention", "must be at least 1d")
    return s


read_sessions = obj(_sessions)


def load_secrets(settings: SessionSettings, directory: str, problems: Problems) -> tuple[SessionSettings, dict]:
    """Read each RADIUS client's secret (a 0600 file, relative to the policy directory).
    Returns the settings with secrets filled in and {"secret:<id>": sha256} for the version."""
    r = settings.radius
    if r is None:
        return settings, {}
    clients, digests = [], {}
    for c in r.clients:
        path = Path(directory) / c.secret_file
        where = f"sessions.radius.clients[id={c.id}].secret_file"
        try:
            st = path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                problems.add(c.loc, where, f"{path} is mode {stat.S_IMODE(st.st_mode):04o}: a secret "
                             "must be readable by its owner only (chmod 600)")
                continue
            secret = path.read_bytes().strip()
        except OSError as exc:
            problems.add(c.loc, where, f"cannot read {path}: {exc.strerror}")
            continue
        if not secret:
            problems.add(c.loc, where, f"{path} is empty")
            continue
        digests[f"secret:{c.id}"] = hashlib.sha256(secret).hexdigest()
        clients.append(dataclasses.replace(c, secret=secret))
    radius = dataclasses.replace(r, clients=tuple(clients))
    return dataclasses.replace(settings, radius=radius), digests


def check_sessions(settings: SessionSettings, problems: Problems) -> None:
    r = settings.radius
    if r is not None:
        seen: dict[str, RadiusClient] = {}
        for c in r.clients:
            if c.id in seen:
                problems.add(c.loc, "sessions.radius.clients", f"client id {c.id!r} defined twice")
            seen[c.id] = c
    pools = settings.nat_pools
    for i, a in enumerate(pools):
        for b in pools[i + 1:]:
            if a.public.overlaps(b.public):
                problems.add(b.loc, f"sessions.nat_pools[id={b.id}].public", f"overlaps pool {a.id}")
    paths = [k.path for k in settings.kea]
    for k in settings.kea:
        if paths.count(k.path) > 1:
            problems.add(k.loc, "sessions.kea", f"{k.path} is followed twice")
            break
