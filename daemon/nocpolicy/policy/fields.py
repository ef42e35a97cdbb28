"""Field readers: turn located nodes into typed values, recording every problem.

Converters take a :class:`Node` and return a value or raise :class:`Invalid`;
:class:`Obj` reads a mapping key by key and reports unknown keys at the end.
The same readers validate policy files, admin API bodies and MQTT payloads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .nodes import Loc, Node, Problem, child_path


class Invalid(Exception):
    """Raised by a converter: the reason names what was expected."""


MISSING: Any = object()
Conv = Callable[[Node, "Problems"], Any]


class Problems(list):
    """A list of :class:`Problem` with helpers."""

    def add(self, where: Node | Loc, path: str, reason: str) -> None:
        loc = where.loc if isinstance(where, Node) else where
        self.append(Problem(loc, path, reason))


def _typename(v) -> str:
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing (null)"
    return f"{type(v).__name__} {v!r}"


class Obj:
    """Reads one mapping; call :meth:`done` to report keys nobody asked for."""

    def __init__(self, node: Node, problems: Problems):
        self.node = node
        self.problems = problems
        self.locs: dict[str, Loc] = {}
        self._seen: set[str] = set()
        self.ok = isinstance(node.value, dict)
        if not self.ok:
            problems.add(node, node.path, f"expected a mapping, got {_typename(node.value)}")
        self._map: dict[str, Node] = node.value if self.ok else {}

    def has(self, key: str) -> bool:
        return key in self._map

    def get(self, key: str, conv: Conv, default=MISSING, *, required: bool = False):
        self._seen.add(key)
        n = self._map.get(key)
        if n is None:
            if required or default is MISSING:
                if self.ok:
                    self.problems.add(self.node, child_path(self.node.path, key), "required key is missing")
                return None
            return default
        self.locs[key] = n.loc
        return convert(n, conv, self.problems)

    def req(self, key: str, conv: Conv):
        return self.get(key, conv, required=True)

    def done(self) -> None:
        allowed = sorted(self._seen)
        for key, n in self._map.items():
            if key not in self._seen:
                hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
                self.problems.add(n.key_loc, child_path(self.node.path, key), f"unknown key{hint}")


def convert(node: Node, conv: Conv, problems: Problems):
    try:
        return conv(node, problems)
    except Invalid as exc:
        problems.add(node, node.path, str(exc))
        return None


# --- scalar converters -------------------------------------------------------------

def as_str(node: Node, _p=None) -> str:
    if isinstance(node.value, (dict, list)) or node.value is None or isinstance(node.value, bool):
        raise Invalid(f"expected a string, got {_typename(node.value)}")
    return str(node.value)


def as_text(node: Node, _p=None) -> str:
    s = as_str(node).strip()
    if not s:
        raise Invalid("must not be empty")
    return s


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def as_id(node: Node, _p=None) -> str:
    s = as_str(node)
    if not _ID_RE.match(s):
        raise Invalid(f"{s!r} is not a valid id (letters, digits, '.', '_', '-'; at most 63)")
    return s


def as_bool(node: Node, _p=None) -> bool:
    if not isinstance(node.value, bool):
        raise Invalid(f"expected true or false, got {_typename(node.value)}")
    return node.value


def as_int(node: Node, _p=None) -> int:
    if isinstance(node.value, bool) or not isinstance(node.value, int):
        raise Invalid(f"expected an integer, got {_typename(node.value)}")
    return node.value


def int_range(lo: int, hi: int) -> Conv:
    def conv(node: Node, _p=None) -> int:
        v = as_int(node)
        if not lo <= v <= hi:
            raise Invalid(f"{v} is out of range {lo}..{hi}")
        return v
    return conv


def as_fraction(node: Node, _p=None) -> float:
    v = node.value
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            v = float(v.strip()[:-1]) / 100
        except ValueError:
            raise Invalid(f"{node.value!r} is not a percentage") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise Invalid(f"expected a fraction 0..1 or a percentage like '40%', got {_typename(node.value)}")
    if not 0 <= v <= 1:
        raise Invalid(f"{node.value!r} is outside 0..1 (0%..100%)")
    return float(v)


def one_of(*choices: str) -> Conv:
    def conv(node: Node, _p=None) -> str:
        s = as_str(node).lower()
        if s not in choices:
            raise Invalid(f"{node.value!r} is not one of: {', '.join(choices)}")
        return s
    return conv


_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
# tc reads "mbps" as megaBYTES per second, people usually mean megabits: refuse the guess.
_AMBIGUOUS_RATE_UNITS = ("bps", "kbps", "mbps", "gbps", "tbps")
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def as_rate(node: Node, _p=None) -> int:
    """A bit rate like ``50mbit`` or ``1gbit`` (tc units, decimal), in bit/s."""
    v = node.value
    if isinstance(v, int) and not isinstance(v, bool):
        if v <= 0:
            raise Invalid("a rate must be positive")
        if v > MAX_RATE:
            raise Invalid(f"{_short(v)} is outside 1..10tbit (bit/s)")
        return v
    if isinstance(v, str) and len(v) > 2 * _MAX_NUMBER_CHARS:
        raise Invalid(f"{_short(v)} is not a sane rate (at most 10tbit)")
    m = _RATE_RE.match(str(v)) if isinstance(v, str) else None
    if m and m.group(2).lower() in _AMBIGUOUS_RATE_UNITS:
        unit = m.group(2).lower()
        raise Invalid(f"{v!r}: {unit!r} is ambiguous (tc reads it as bytes per second); "
                      f"write {m.group(1)}{unit[:-3]}bit for bits per second")
    if not m or m.group(2).lower() not in _RATE_UNITS:
        raise Invalid(f"{v!r} is not a rate (examples: 800kbit, 50mbit, 1gbit)")
    bits = int(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()])
    if bits <= 0:
        raise Invalid("a rate must be positive")
    if bits > MAX_RATE:
        raise Invalid(f"{_short(v)} is beyond the highest rate accepted (10tbit)")
    return bits


_DUR_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


# Hard ceilings for every value read by the converters below, whatever the field:
# a typo (a 26-digit duration) is refused where it is written instead of overflowing
# a timer or a C int later. Fields with a narrower sane range say so (docs/policy.md).
MAX_DURATION = 10 * 365 * 86400.0       # 10 years
MAX_RATE = 10**13                        # 10 Tbit/s
MAX_SIZE = 2**40                         # 1 TiB
_MAX_NUMBER_CHARS = 24


def _duration_text(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)}{unit}"
    return f"{seconds:g}s"


def as_duration(node: Node, _p=None) -> float:
    """A duration like ``30s``, ``5m``, ``1h30m``, ``30d``; a bare number is seconds (0..10 years)."""
    v = node.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = float(v) if abs(v) < 1e300 else float("inf")
        if secs != secs or secs < 0:
            raise Invalid("a duration must not be negative")
    else:
        s = str(v).strip().replace(" ", "") if isinstance(v, str) else ""
        parts = _DUR_RE.findall(s)
        if not s or "".join(a + b for a, b in parts) != s:
            raise Invalid(f"{v!r} is not a duration (examples: 500ms, 30s, 5m, 1h, 30d)")
        if any(len(a) > _MAX_NUMBER_CHARS for a, _ in parts):
            secs = float("inf")
        else:
            secs = sum(float(a) * _DUR_UNITS[b] for a, b in parts)
    if secs > MAX_DURATION:
        raise Invalid(f"{_short(v)} is beyond the longest duration accepted anywhere (3650d)")
    return secs


def duration_range(lo: float, hi: float) -> Conv:
    """A duration within ``lo..hi`` seconds (the field's documented sane range)."""
    def conv(node: Node, _p=None) -> float:
        v = as_duration(node)
        if not lo <= v <= hi:
            raise Invalid(f"{_short(node.value)} is outside {_duration_text(lo)}..{_duration_text(hi)}")
        return v
    return conv


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gib": 2**30}
_SIZE_RE = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,6})?)\s*([a-zA-Z]*)\s*$")


def size_range(lo: int, hi: int) -> Conv:
    """A size in bytes like ``64MiB``, ``500kB`` or a bare integer, within ``lo..hi``."""
    def conv(node: Node, _p=None) -> int:
        v = node.value
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        else:
            m = _SIZE_RE.match(v) if isinstance(v, str) else None
            if not m or m.group(2).lower() not in _SIZE_UNITS:
                raise Invalid(f"{_short(v)} is not a size (examples: 500kB, 64MiB, 1GiB)")
            n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
        if not lo <= n <= min(hi, MAX_SIZE):
            raise Invalid(f"{_short(v)} is outside {lo}..{hi} bytes")
        return n
    return conv


def as_prefix(node: Node, _p=None) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    s = as_str(node).strip()
    try:
        return ipaddress.ip_network(s, strict=True)
    except ValueError as exc:
        try:
            net = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise Invalid(f"{s!r} is not an IPv4/IPv6 prefix: {exc}") from None
        raise Invalid(f"{s!r} has host bits set (did you mean {net}?)") from None


def as_ip(node: Node, _p=None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    s = as_str(node).strip()
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise Invalid(f"{s!r} is not an IPv4/IPv6 address") from None


def parse_hostport(s: str, default_port: int | None = None) -> tuple[str, int]:
    """``1.2.3.4:53``, ``[::1]:53``, or a bare address with a default port."""
    s = s.strip()
    host, port = s, None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{s!r}: missing ']'")
        host, rest = s[1:end], s[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{s!r}: expected ':PORT' after ']'")
            port = rest[1:]
    elif s.count(":") == 1:
        host, port = s.split(":")
    if port is None:
        if default_port is None:
            raise ValueError(f"{s!r}: expected ADDR:PORT")
        port_i = default_port
    else:
        if not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{s!r}: bad port {port!r}")
        port_i = int(port)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{s!r}: {host!r} is not an IP address") from None
    return host, port_i


def as_hostport(default_port: int | None = None) -> Conv:
    def conv(node: Node, _p=None) -> tuple[str, int]:
        try:
            return parse_hostport(as_str(node), default_port)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    return conv


def as_timezone(node: Node, _p=None) -> str:
    s = as_str(node)
    try:
        ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"{s!r} is not a known IANA time zone") from None
    return s


def as_datetime(node: Node, _p=None, tz: str = "Asia/Tokyo") -> dt.datetime:
    """An ISO 8601 time; without an offset it is read in ``tz`` (Asia/Tokyo by default)."""
    v = node.value
    if isinstance(v, dt.datetime):
        out = v
    elif isinstance(v, str):
        try:
            out = dt.datetime.fromisoformat(v.strip())
        except ValueError:
            raise Invalid(f"{v!r} is not an ISO 8601 time (example: 2026-01-20T01:00:00+09:00)") from None
    else:
        raise Invalid(f"expected an ISO 8601 time, got {_typename(v)}")
    if out.tzinfo is None:
        out = out.replace(tzinfo=ZoneInfo(tz))
    return out


def as_email(node: Node, _p=None) -> str:
    s = as_str(node).strip()
    if not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", s):
        raise Invalid(f"{s!r} is not an e-mail address")
    return s


def as_url(*schemes: str) -> Conv:
    def conv(node: Node, _p=None) -> str:
        s = as_str(node).strip()
        scheme = s.split("://", 1)[0].lower() if "://" in s else ""
        if scheme not in schemes:
            raise Invalid(f"{s!r} is not a URL with scheme {' or '.join(schemes)}")
        return s
    return conv


# --- composite converters -------------------------------------------------------------

def list_of(conv: Conv, *, min_items: int = 0, unique: bool = False) -> Conv:
    def read(node: Node, problems: Problems) -> tuple:
        v = node.value
        if v is None:
            v = []
        if not isinstance(v, list):
            # A single scalar is accepted where a list is expected: `tags: home`.
            if isinstance(v, dict):
                raise Invalid(f"expected a list, got {_typename(v)}")
            v = [node]
        if len(v) < min_items:
            raise Invalid(f"expected at least {min_items} item(s)")
        out, seen = [], {}
        for item in v:
            val = convert(item, conv, problems)
            if val is None:
                continue
            if unique:
                key = val
                if key in seen:
                    problems.add(item, item.path, f"duplicate {val!s} (first at line {seen[key].line})")
                    continue
                seen[key] = item.loc
            out.append(val)
        return tuple(out)
    return read


def obj(parse: Callable[[Obj], Any]) -> Conv:
    """Adapt a function that reads an :class:`Obj` into a converter."""
    def read(node: Node, problems: Problems):
        o = Obj(node, problems)
        if not o.ok:
            return None
        value = parse(o)
        o.done()
        return value
    return read


def ids_unique(items: Iterable, what: str, problems: Problems) -> dict:
    """Index items by ``.id``; report duplicates at the second occurrence."""
    out: dict = {}
    for item in items:
        if item is None or item.id is None:
            continue
        if item.id in out:
            first = out[item.id].loc
            problems.add(item.loc, f"{what}[id={item.id}]", f"duplicate id {item.id!r} (first defined at {first})")
            continue
        out[item.id] = item
    return out
