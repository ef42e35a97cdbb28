"""Resolver query-log line parsers (pure): unbound ``log-queries``/``log-replies`` and BIND ``querylog``.

unbound (``log-queries: yes``; with or without ``log-time-ascii`` or syslog)::

    [1732500000] unbound[1234:0] info: 192.0.2.10 evil.example. A IN
    Nov 25 10:00:00 unbound[1234:0] info: 192.0.2.10 evil.example. A IN
    ... info: 192.0.2.10 evil.example. A IN NOERROR 0.000000 0 45      (log-replies)

BIND 9 (``category queries``; ``print-time yes``)::

    25-Nov-2026 10:00:00.123 queries: info: client @0x7f0 192.0.2.10#53211 (evil.example): query: evil.example IN A +E(0)K (192.0.2.1)
    client 192.0.2.10#53211 (evil.example): view inside: query: evil.example IN A + (192.0.2.1)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

FORMATS = ("unbound", "bind")

_UNBOUND = re.compile(
    r"\binfo: (?P<client>[0-9A-Fa-f:.]+) (?P<name>\S+) (?P<qtype>[A-Z0-9]+|TYPE\d+) (?P<qclass>[A-Z]+|CLASS\d+)"
    r"(?P<reply> [A-Z]+ \S+ \S+ \S+)?\s*$")
_BIND = re.compile(
    r"\bclient (?:@0x[0-9a-fA-F]+ )?(?P<client>[0-9A-Fa-f:.%a-z]+)#(?P<port>\d+)(?: \([^)]*\))?: "
    r"(?:view \S+: )?query: (?P<name>\S+) (?P<qclass>\S+) (?P<qtype>\S+)")
_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "SVCB": 64, "HTTPS": 65, "ANY": 255}


@dataclass(frozen=True, slots=True)
class LogQuery:
    client: str
    name: str          # lower-case, no trailing dot
    qtype: int
    reply: bool        # an unbound log-replies line (the same lookup as its query line)


def _qtype(s: str) -> int:
    if s.startswith("TYPE") and s[4:].isdigit():
        return int(s[4:])
    return _TYPES.get(s, 0)


def _client(s: str) -> str | None:
    s = s.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return None


def parse_unbound(line: str) -> LogQuery | None:
    m = _UNBOUND.search(line)
    if m is None:
        return None
    client = _client(m["client"])
    if client is None:
        return None
    return LogQuery(client, m["name"].lower().rstrip("."), _qtype(m["qtype"]), m["reply"] is not None)


def parse_bind(line: str) -> LogQuery | None:
    m = _BIND.search(line)
    if m is None:
        return None
    client = _client(m["client"])
    if client is None:
        return None
    return LogQuery(client, m["name"].lower().rstrip("."), _qtype(m["qtype"]), False)


PARSERS = {"unbound": parse_unbound, "bind": parse_bind}
