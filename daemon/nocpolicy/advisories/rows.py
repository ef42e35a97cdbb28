"""Reading imported rows (pure): CSV with a header line, or JSON (a list of objects, or an
object holding one under ``key``). Used by NICT advisories and by ICT-ISAC attack records.

Every problem names where it is (``FILE:LINE`` for CSV, ``FILE[INDEX]`` for JSON) and the
field; an import with any problem is refused whole (nothing is recorded).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import ipaddress
import json

from ..errors import Invalid

MAX_ROWS = 100_000
MAX_PROBLEMS = 20
MAX_TEXT = 256            # characters of a free-text field


class Problems:
    def __init__(self):
        self.items: list[str] = []

    def add(self, where: str, field: str, why: str) -> None:
        self.items.append(f"{where}: {field}: {why}")

    def raise_if_any(self) -> None:
        if self.items:
            more = len(self.items) - MAX_PROBLEMS
            text = "; ".join(self.items[:MAX_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
            raise Invalid(f"{len(self.items)} problem(s): {text}", field="text")


def read_rows(text: str, fmt: str, source: str, key: str) -> list[tuple[str, dict]]:
    """[(where, row)] of ``text`` (fmt: csv | json | auto: JSON when it starts with [ or {)."""
    if fmt == "auto":
        fmt = "json" if text.lstrip()[:1] in ("[", "{") else "csv"
    if fmt == "json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise Invalid(f"{source}: not JSON: {exc}", field="text") from None
        items = doc.get(key) if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise Invalid(f"{source}: expected a list of objects, or {{\"{key}\": [...]}}", field="text")
        rows = [(f"{source}[{i}]", r) for i, r in enumerate(items)]
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        rows = [(f"{source}:{reader.line_num}", {k: v for k, v in r.items() if k is not None and v != ""})
                for r in reader]
    else:
        raise Invalid(f"format must be csv, json or auto, not {fmt!r}", field="format")
    if len(rows) > MAX_ROWS:
        raise Invalid(f"{source}: {len(rows)} rows; at most {MAX_ROWS} per import", field="text")
    return rows


def time_of(p: Problems, where: str, row: dict, field: str) -> dt.datetime | None:
    v = row.get(field)
    try:
        t = dt.datetime.fromisoformat(str(v).strip()) if isinstance(v, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        p.add(where, field, f"{v!r} is not an ISO 8601 time with an offset (example: 2026-07-01T09:30:00+09:00)")
        return None
    return t


def address_of(p: Problems, where: str, row: dict, field: str, required: bool = True) -> str | None:
    v = row.get(field)
    if v is None and not required:
        return None
    try:
        return str(ipaddress.ip_address(str(v).strip()))
    except ValueError:
        p.add(where, field, f"{v!r} is not an IPv4 or IPv6 address")
        return None


def port_of(p: Problems, where: str, row: dict, field: str) -> int | None:
    v = row.get(field)
    if v is None:
        return None
    s = str(v).strip()
    if not (s.isascii() and s.isdigit() and int(s) <= 65535):
        p.add(where, field, f"{v!r} is not a port (0-65535)")
        return None
    return int(s)


def text_of(p: Problems, where: str, row: dict, field: str, required: bool = True,
            choices: tuple[str, ...] | None = None) -> str | None:
    v = row.get(field)
    if v is None or str(v).strip() == "":
        if required:
            p.add(where, field, "missing")
        return None
    s = str(v).strip()
    if len(s) > MAX_TEXT:
        p.add(where, field, f"at most {MAX_TEXT} characters")
        return None
    if choices is not None and s.lower() not in choices:
        p.add(where, field, f"{s!r} is not one of {', '.join(choices)}")
        return None
    return s.lower() if choices is not None else s
