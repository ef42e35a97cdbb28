"""The customer inventory as CSV (``inventory: {file: customers.csv}``): an ISP's CRM
export of up to millions of customers, validated like YAML (``file:line: column: reason``).

Columns (header line required, any order, unknown columns refused; see docs/policy.md):
``id``, ``name`` (required), ``plan``, ``prefixes``, ``logins``, ``tags``, ``nodes``
(space-separated lists), ``contact`` (an e-mail address, an http(s) webhook URL or
``mqtt:<topic>``). One customer per line; fields may be quoted ("a, b").

Rows unchanged since the previous load (same bytes) reuse the previous Customer
objects, so a reload that changes 1% of rows parses 1% of them, and every consumer
can tell unchanged customers by identity.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from .customers import Contact, Customer, as_mqtt_topic
from .fields import Invalid, Obj, Problems, as_text, obj
from .nodes import Loc, Node

COLUMNS = ("id", "name", "plan", "prefixes", "logins", "tags", "nodes", "contact")
REQUIRED = ("id", "name")
MAX_ROWS = 5_000_000
MAX_PROBLEMS = 1000           # more are summarised: a broken export should not flood the log
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class InventorySettings:
    file: str | None = None
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


def _inventory(o: Obj) -> InventorySettings:
    return InventorySettings(file=o.req("file", as_text), loc=o.node.loc)


read_inventory_settings = obj(_inventory)


class RowError(Exception):
    def __init__(self, column: str, reason: str):
        super().__init__(reason)
        self.column = column


def _ids(text: str, column: str) -> tuple[str, ...]:
    items = tuple(text.split())
    for s in items:
        if not _ID.match(s):
            raise RowError(column, f"{s!r} is not a valid id (letters, digits, '.', '_', '-'; at most 63)")
    if len(set(items)) != len(items):
        raise RowError(column, "lists an item twice")
    return items


_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_NET = {4: ipaddress.IPv4Network, 6: ipaddress.IPv6Network}


def _fast_network(s: str):
    """``ip_network(s)`` for the common well-formed ``ADDR/LEN`` (3x faster: no string parsing
    in ipaddress); anything unusual goes to ipaddress for its error message."""
    addr, slash, plen = s.partition("/")
    fam = 6 if ":" in addr else 4
    bits = 32 if fam == 4 else 128
    if not slash or not plen.isdigit() or not 0 <= int(plen) <= bits or (fam == 4 and addr.count(".") != 3):
        return ipaddress.ip_network(s)
    try:
        value = int.from_bytes(socket.inet_pton(_AF[fam], addr), "big")
    except OSError:
        return ipaddress.ip_network(s)
    if value & ((1 << (bits - int(plen))) - 1):
        return ipaddress.ip_network(s)          # host bits set: ipaddress says so
    return _NET[fam]((value, int(plen)))


def _prefixes(text: str) -> tuple:
    out = []
    for s in text.split():
        try:
            out.append(_fast_network(s))
        except ValueError as exc:
            try:
                net = ipaddress.ip_network(s, strict=False)
            except ValueError:
                raise RowError("prefixes", f"{s!r} is not an IPv4/IPv6 prefix: {exc}") from None
            raise RowError("prefixes", f"{s!r} has host bits set (did you mean {net}?)") from None
    if len(set(out)) != len(out):
        raise RowError("prefixes", "lists a prefix twice")
    return tuple(out)


def _contact(text: str) -> Contact:
    s = text.strip()
    if not s:
        return Contact()
    if s.startswith("mqtt:"):
        try:
            return Contact(mqtt_topic=as_mqtt_topic(Node(s[5:], Loc("?", 0), "contact")))
        except Invalid as exc:
            raise RowError("contact", str(exc)) from None
    if s.startswith(("http://", "https://")):
        return Contact(webhook=s)
    if _EMAIL.match(s):
        return Contact(email=s)
    raise RowError("contact", f"{s!r} is not an e-mail address, an http(s) URL or mqtt:<topic>")


def parse_row(row: list[str], cols: dict[str, int], loc: Loc) -> Customer:
    def col(name: str) -> str:
        i = cols.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""
    if len(row) != len(cols):
        raise RowError("(row)", f"{len(row)} fields, the header has {len(cols)}")
    cid, name = col("id"), col("name")
    if not _ID.match(cid):
        raise RowError("id", f"{cid!r} is not a valid id (letters, digits, '.', '_', '-'; at most 63)")
    if not name:
        raise RowError("name", "must not be empty")
    plan = col("plan") or None
    if plan is not None and not _ID.match(plan):
        raise RowError("plan", f"{plan!r} is not a valid id")
    logins = tuple(col("logins").split())
    if len(set(logins)) != len(logins):
        raise RowError("logins", "lists a login twice")
    return Customer(id=cid, name=name, prefixes=_prefixes(col("prefixes")), tags=_ids(col("tags"), "tags"),
                    nodes=_ids(col("nodes"), "nodes"), plan=plan, contact=_contact(col("contact")),
                    logins=logins, loc=loc)


def _header(line: str, rel: str, problems: Problems) -> dict[str, int] | None:
    names = [c.strip().lower() for c in next(csv.reader([line]))] if line.strip() else []
    bad = [n for n in names if n not in COLUMNS]
    missing = [n for n in REQUIRED if n not in names]
    if bad or missing or len(set(names)) != len(names):
        why = (f"unknown column(s) {', '.join(map(repr, bad))}; " if bad else "") + \
              (f"missing column(s) {', '.join(missing)}; " if missing else "")
        problems.add(Loc(rel, 1), "(header)", f"{why}the header names the columns, each once, of: "
                     f"{', '.join(COLUMNS)}")
        return None
    return {n: i for i, n in enumerate(names)}


def read_inventory(path: Path, rel: str, problems: Problems,
                   previous: dict[str, Customer] | None = None) -> tuple[tuple[Customer, ...], dict[str, Customer], str]:
    """(customers, the row cache for the next load, sha256 of the file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(Loc(rel, 0), "inventory.file", f"cannot read: {exc.strerror}")
        return (), {}, ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        problems.add(Loc(rel, 0), "inventory.file", f"not UTF-8: {exc}")
        return (), {}, digest
    cols = _header(lines[0].lstrip("\ufeff").rstrip("\r"), rel, problems)
    if cols is None:
        return (), {}, digest
    if len(lines) > MAX_ROWS:
        problems.add(Loc(rel, 0), "inventory.file", f"{len(lines)} lines: at most {MAX_ROWS} rows")
        return (), {}, digest
    return (*_rows(lines, cols, rel, problems, previous or {}), digest)


def _rows(lines, cols, rel, problems, previous) -> tuple[tuple[Customer, ...], dict[str, Customer]]:
    out, cache, errors = [], {}, 0
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        c = previous.get(line)
        if c is not None and c.loc.line != n:
            c = dataclasses.replace(c, loc=Loc(rel, n))     # same customer (equal), moved line
        elif c is None:
            try:
                row = next(csv.reader([line])) if '"' in line else line.rstrip("\r").split(",")
                c = parse_row(row, cols, Loc(rel, n))
            except (RowError, csv.Error) as exc:
                errors += 1
                if errors <= MAX_PROBLEMS:
                    problems.add(Loc(rel, n), getattr(exc, "column", "(row)"), str(exc))
                continue
        out.append(c)
        cache[line] = c
    if errors > MAX_PROBLEMS:
        problems.add(Loc(rel, 0), "inventory.file", f"{errors - MAX_PROBLEMS} more bad rows not listed")
    return tuple(out), cache
