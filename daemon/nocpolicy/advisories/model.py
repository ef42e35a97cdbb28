"""NICT advisories (pure): what one is, and reading a CSV or JSON import.

Fields: ``advisory_id``, ``source`` (notice | nicter), ``address``, ``port`` (optional),
``time`` (ISO 8601 with an offset), ``service`` (e.g. telnet, http) and ``finding`` (e.g.
weak-credentials, mirai, open-resolver), ``detail`` optional. docs/advisories.md.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from .rows import Problems, address_of, port_of, read_rows, text_of, time_of

SOURCES = ("notice", "nicter")
STATES = ("open", "notified", "resolved", "unattributable", "closed")
TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9._/+-]{0,63}$")


@dataclass(frozen=True)
class Advisory:
    advisory_id: str
    source: str
    address: str
    port: int | None
    time: dt.datetime
    service: str
    finding: str
    detail: str | None = None


def parse_advisories(text: str, fmt: str, name: str) -> list[Advisory]:
    """Every advisory of an import, or Invalid naming each problem's line/index and field."""
    p = Problems()
    out = []
    for where, row in read_rows(text, fmt, name, "advisories"):
        if not isinstance(row, dict):
            p.add(where, "(advisory)", "must be an object")
            continue
        a = Advisory(text_of(p, where, row, "advisory_id"), text_of(p, where, row, "source", choices=SOURCES),
                     address_of(p, where, row, "address"), port_of(p, where, row, "port"),
                     time_of(p, where, row, "time"), _token(p, where, row, "service"),
                     _token(p, where, row, "finding"), text_of(p, where, row, "detail", required=False))
        out.append(a)
    p.raise_if_any()
    return out


def _token(p: Problems, where: str, row: dict, field: str) -> str | None:
    s = text_of(p, where, row, field)
    if s is None:
        return None
    s = s.lower()
    if not TOKEN_RE.match(s):
        p.add(where, field, f"{s!r}: lower-case letters, digits and . _ / + - only (at most 64)")
        return None
    return s
