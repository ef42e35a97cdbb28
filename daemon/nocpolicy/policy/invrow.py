"""One row of the CSV inventory: the columns, the row checks (RowError names the column) and
building a row's Customer. Shared by the reader (inventory.py), the column-wise checks
(invbulk.py) and the compact table (invtable.py)."""

from __future__ import annotations

import ipaddress
import re
import socket

from .customers import Contact, Customer, as_mqtt_topic
from .fields import Invalid
from .nodes import Loc, Node

COLUMNS = ("id", "name", "plan", "prefixes", "logins", "tags", "nodes", "contact")
V6 = 0x100          # prefix code: prefix length | V6 for an IPv6 prefix
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


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


_AF = {False: socket.AF_INET, True: socket.AF_INET6}
_inet_pton = socket.inet_pton


def _prefix(s: str) -> tuple[int, int]:
    """(code, value) of prefix ``s`` (invtable.V6 | length for IPv6). The common ``ADDR/LEN``
    is parsed with inet_pton (ipaddress costs microseconds per prefix); anything unusual goes
    to ipaddress, for its meaning or its error message."""
    addr, slash, plen = s.partition("/")
    v6 = ":" in addr
    bits = 128 if v6 else 32
    if slash and plen.isdigit() and int(plen) <= bits and (v6 or addr.count(".") == 3):
        try:
            value = int.from_bytes(_inet_pton(_AF[v6], addr), "big")
        except OSError:
            value = -1
        if value >= 0 and not value & ((1 << (bits - int(plen))) - 1):
            return (V6 if v6 else 0) | int(plen), value
    try:
        net = ipaddress.ip_network(s)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(s, strict=False)
        except ValueError:
            raise RowError("prefixes", f"{s!r} is not an IPv4/IPv6 prefix: {exc}") from None
        raise RowError("prefixes", f"{s!r} has host bits set (did you mean {loose}?)") from None
    return (V6 if net.version == 6 else 0) | net.prefixlen, int(net.network_address)


def _prefixes(text: str) -> list[tuple[int, int]]:
    out = [_prefix(s) for s in text.split()]
    if len(out) > 1 and len(set(out)) != len(out):
        raise RowError("prefixes", "lists a prefix twice")
    return out


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


def _check_contact(s: str) -> None:
    if s and not s.startswith(("http://", "https://")) and not _EMAIL.match(s):
        _contact(s)            # mqtt:<topic> checked, anything else refused with the reason


def column_indexes(cols: dict[str, int]) -> tuple[int, ...]:
    """The index of each of COLUMNS in a row (-1: the column is absent)."""
    return tuple(cols.get(name, -1) for name in COLUMNS)


def check_row(row: list[str], ix: tuple[int, ...]) -> tuple[str, str | None, list[tuple[int, int]]]:
    """Validate one row (RowError names the column); (id, plan, packed prefixes)."""
    if len(row) != len(ix) - ix.count(-1):
        raise RowError("(row)", f"{len(row)} fields, the header has {len(ix) - ix.count(-1)}")
    i_id, i_name, i_plan, i_pfx, i_log, i_tags, i_nodes, i_contact = ix
    cid = row[i_id].strip()
    if not _ID.match(cid):
        raise RowError("id", f"{cid!r} is not a valid id (letters, digits, '.', '_', '-'; at most 63)")
    if not row[i_name].strip():
        raise RowError("name", "must not be empty")
    plan = row[i_plan].strip() if i_plan >= 0 else ""
    if plan and not _ID.match(plan):
        raise RowError("plan", f"{plan!r} is not a valid id")
    if i_log >= 0:
        logins = row[i_log].split()
        if len(logins) > 1 and len(set(logins)) != len(logins):
            raise RowError("logins", "lists a login twice")
    for k, name in ((i_tags, "tags"), (i_nodes, "nodes")):
        if k >= 0 and row[k].strip():
            _ids(row[k], name)
    if i_contact >= 0:
        _check_contact(row[i_contact].strip())
    return cid, plan or None, _prefixes(row[i_pfx]) if i_pfx >= 0 else []


def build_customer(row: list[str], cols: dict[str, int], loc: Loc, prefixes: tuple) -> Customer:
    """The Customer of a row already validated by :func:`check_row`."""
    def col(name: str) -> str:
        i = cols.get(name)
        return row[i].strip() if i is not None else ""
    return Customer(id=col("id"), name=col("name"), prefixes=prefixes, tags=tuple(col("tags").split()),
                    nodes=tuple(col("nodes").split()), plan=col("plan") or None,
                    contact=_contact(col("contact")), logins=tuple(col("logins").split()), loc=loc)


def parse_row(row: list[str], cols: dict[str, int], loc: Loc) -> Customer:
    """Validate one row and build its Customer (RowError names the column)."""
    _, _, prefixes = check_row(row, column_indexes(cols))
    return build_customer(row, cols, loc, tuple(ipaddress.ip_network((v, c & 0xFF)) for c, v in prefixes))
