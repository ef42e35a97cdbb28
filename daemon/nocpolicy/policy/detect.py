"""The ``detect:`` section: passive C&C detection inputs (dnstap, capture, log files)
and what a detection enforces (RPZ for the resolver, nftables address blocks, events)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .fields import (
    Invalid,
    Obj,
    as_ip,
    as_prefix,
    as_text,
    duration_range,
    int_range,
    list_of,
    obj,
    one_of,
)
from .nodes import Loc

ENFORCE = ("rpz", "nft", "events")
LOG_FORMATS = ("unbound", "bind")
RPZ_VIEWS = ("tags", "none")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_NFT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Capture:
    interface: str
    port: int = 53
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class LogFile:
    path: str
    format: str = "unbound"
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


@dataclass(frozen=True)
class RpzSettings:
    directory: str = "rpz"                 # relative paths are under the state directory
    origin: str = "rpz.nocpolicy"          # zones mandatory.<origin>. and security.<origin>.
    views: str = "tags"                    # tags: unbound access-control-tag include; none: see docs
    ttl: int = 60
    reload_zone: tuple[str, ...] = ("unbound-control", "auth_zone_reload", "{zone}")
    reload_config: tuple[str, ...] = ("unbound-control", "reload")


@dataclass(frozen=True)
class NftSettings:
    table: str = "nocpolicy_detect"        # table inet <table>
    hook: str = "forward"
    command: tuple[str, ...] = ("nft",)


@dataclass(frozen=True)
class DetectSettings:
    dnstap_socket: str | None = None
    captures: tuple[Capture, ...] = ()
    logfiles: tuple[LogFile, ...] = ()
    enforce: tuple[str, ...] = ("events",)
    block_for: float = 24 * 3600.0
    events_interval: float = 60.0
    rpz: RpzSettings = RpzSettings()
    nft: NftSettings = NftSettings()
    resolvers: tuple = ()          # capture: responses only from these (none: upstreams + own addresses)
    never_block: tuple = ()        # prefixes never added to the nft address blocks
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.dnstap_socket or self.captures or self.logfiles)


def _ifname(node, _p=None) -> str:
    s = as_text(node)
    if not _IFNAME.match(s):
        raise Invalid(f"{s!r} is not an interface name")
    return s


def _nft_name(node, _p=None) -> str:
    s = as_text(node)
    if not _NFT_NAME.match(s):
        raise Invalid(f"{s!r} is not an nftables table name (letters, digits, '_')")
    return s


def _origin(node, _p=None) -> str:
    s = as_text(node).lower().rstrip(".")
    if not re.match(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$", s):
        raise Invalid(f"{s!r} is not a zone name")
    return s


def _command(node, problems) -> tuple[str, ...]:
    argv = list_of(as_text, min_items=1)(node, problems)
    if not argv:
        raise Invalid("expected a command as a list of arguments, e.g. [unbound-control, reload]")
    return argv


def _capture(o: Obj) -> Capture:
    return Capture(interface=o.req("interface", _ifname), port=o.get("port", int_range(1, 65535), 53),
                   loc=o.node.loc)


def _logfile(o: Obj) -> LogFile:
    return LogFile(path=o.req("path", as_text), format=o.get("format", one_of(*LOG_FORMATS), "unbound"),
                   loc=o.node.loc)


def _rpz(o: Obj) -> RpzSettings:
    d = RpzSettings()
    return RpzSettings(
        directory=o.get("directory", as_text, d.directory),
        origin=o.get("origin", _origin, d.origin),
        views=o.get("views", one_of(*RPZ_VIEWS), d.views),
        ttl=o.get("ttl", int_range(0, 86400), d.ttl),
        reload_zone=o.get("reload_zone", _command, d.reload_zone),
        reload_config=o.get("reload_config", _command, d.reload_config),
    )


def _nft(o: Obj) -> NftSettings:
    d = NftSettings()
    return NftSettings(
        table=o.get("table", _nft_name, d.table),
        hook=o.get("hook", one_of("forward", "output"), d.hook),
        command=o.get("command", _command, d.command),
    )


def _dnstap(o: Obj) -> str:
    return o.req("socket", as_text)


def _detect(o: Obj) -> DetectSettings:
    d = DetectSettings()
    s = DetectSettings(
        dnstap_socket=o.get("dnstap", obj(_dnstap), None),
        captures=o.get("capture", list_of(obj(_capture)), ()) or (),
        logfiles=o.get("logfiles", list_of(obj(_logfile)), ()) or (),
        enforce=o.get("enforce", list_of(one_of(*ENFORCE), unique=True), d.enforce) or (),
        block_for=o.get("block_for", duration_range(0.0, 90 * 86400.0), d.block_for),
        events_interval=o.get("events_interval", duration_range(0.0, 86400.0), d.events_interval),
        rpz=o.get("rpz", obj(_rpz), d.rpz) or d.rpz,
        nft=o.get("nft", obj(_nft), d.nft) or d.nft,
        resolvers=o.get("resolvers", list_of(as_ip, unique=True), ()) or (),
        never_block=o.get("never_block", list_of(as_prefix, unique=True), ()) or (),
        loc=o.node.loc,
    )
    if s.block_for is not None and s.block_for < 1:
        o.problems.add(o.locs.get("block_for", o.node.loc), f"{o.node.path}.block_for", "must be at least 1s")
    if s.events_interval is not None and s.events_interval < 1:
        o.problems.add(o.locs.get("events_interval", o.node.loc), f"{o.node.path}.events_interval",
                       "must be at least 1s")
    paths = [lf.path for lf in s.logfiles]
    for lf in s.logfiles:
        if paths.count(lf.path) > 1:
            o.problems.add(lf.loc, f"{o.node.path}.logfiles", f"{lf.path} is followed twice")
            break
    return s


read_detect = obj(_detect)
