"""Validate a block of inventory rows column by column, at C speed (the fast path).

A million rows checked one by one cost about 19 us each; most of an ISP's export is clean,
so a block of rows is checked a column at a time with one regular expression over the
joined column, ``map`` over builtins and sets of the few distinct values (plans, tags,
nodes). The fast path accepts a block only when every row is valid by exactly the rules of
:func:`.inventory.check_row` and nothing needs that function's leniency (spaces around
values, the unusual prefix forms ipaddress accepts); otherwise it returns None and the
caller checks the block row by row, which names every problem as ``file:line: column``.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from .invrow import V6, RowError, _check_contact, _ids

_IDS = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,62}\n)*", re.ASCII)
_CONTACTS = re.compile(r"(?:(?:[^@\s]+@[^@\s]+\.[^@\s]+|https?://[^\n]*|mqtt:[^\n]*|)\n)*")
_SPACE = re.compile(r"\s")
_PREFIX = r"[0-9A-Fa-f:.]{2,39}/[0-9]{1,3}"
_PREFIX_FORM = re.compile(rf"(?:(?:{_PREFIX}(?: {_PREFIX})*)?\n)*", re.ASCII)
_PLEN = {str(n): n for n in range(129)}
_AF4, _AF6, _pton, _from_bytes = socket.AF_INET, socket.AF_INET6, socket.inet_pton, int.from_bytes
# host bits of each prefix code (length, + V6 for IPv6); None for a length the family has not
_MASKS = [(1 << (32 - n)) - 1 if n <= 32 else None for n in range(V6)] + \
         [(1 << (128 - n)) - 1 if n <= 128 else None for n in range(V6)]


@dataclass
class Block:
    """The valid rows of a block: their ids, raw plan values, and prefixes (codes and values in
    row order, ``counts[i]`` of them for row ``i``)."""

    ids: list[str]
    plans: list[str]
    codes: list[int]
    values: list[int]
    counts: list[int]
    logins: tuple[str, ...] = ()        # the logins column as read (space-separated lists)


def _joined_ok(pattern: re.Pattern, column) -> bool:
    return pattern.fullmatch("\n".join(column) + "\n") is not None


def check_block(rows: list[list[str]], ix: tuple[int, ...]) -> Block | None:
    """The block's columns if every row is valid (fast path), else None."""
    width = len(ix) - ix.count(-1)
    if not rows or set(map(len, rows)) != {width}:
        return None
    cols = list(zip(*rows, strict=False))
    i_id, i_name, i_plan, i_pfx, i_log, i_tags, i_nodes, i_contact = ix
    ids = cols[i_id]
    if not _joined_ok(_IDS, ids) or not all(map(str.strip, cols[i_name])):
        return None
    plans = cols[i_plan] if i_plan >= 0 else ("",) * len(rows)
    if not _distinct_ok(plans, _plan_ok) or not _logins_ok(cols, i_log):
        return None
    for k in (i_tags, i_nodes):
        if k >= 0 and not _distinct_ok(cols[k], _ids_ok):
            return None
    if i_contact >= 0 and not _contacts_ok(cols[i_contact]):
        return None
    packed = _prefixes(cols[i_pfx]) if i_pfx >= 0 else ([], [], [0] * len(rows))
    if packed is None:
        return None
    return Block(list(ids), list(plans), *packed, logins=cols[i_log] if i_log >= 0 else ())


def _distinct_ok(column, ok) -> bool:
    return all(ok(v) for v in set(column))


def _plan_ok(v: str) -> bool:
    return v == "" or _IDS.fullmatch(v + "\n") is not None


def _ids_ok(v: str) -> bool:
    try:
        if v.strip():
            _ids(v, "tags")
    except RowError:
        return False
    return True


def _logins_ok(cols, i_log: int) -> bool:
    if i_log < 0:
        return True
    column = cols[i_log]
    if _SPACE.search("".join(column)) is None:      # one login (or none) per row: no duplicate possible
        return True
    return all(len(set(s)) == len(s) for s in (f.split() for f in column if _SPACE.search(f)))


def _contacts_ok(column) -> bool:
    joined = "\n".join(column) + "\n"
    if _CONTACTS.fullmatch(joined) is None:
        return False
    try:
        if "mqtt:" in joined:
            for v in {v for v in column if v.startswith("mqtt:")}:
                _check_contact(v.strip())
    except RowError:
        return False
    return True


def _prefixes(column) -> tuple[list[int], list[int], list[int]] | None:
    """(codes, values, counts per row) of a clean prefixes column (every field empty or
    ``ADDR/LEN`` tokens separated by one space, no host bits, no prefix twice), else None.
    One regular expression checks the form of the whole column; the rest are list
    comprehensions over builtins (faster than ``map`` with method descriptors in 3.11)."""
    joined = "\n".join(column) + "\n"
    if _PREFIX_FORM.fullmatch(joined) is None:
        return None
    counts = [f.count(" ") + 1 if f else 0 for f in column]
    toks = joined.replace("/", " ").split()     # the form makes it address, length, address, ...
    addrs = toks[0::2]
    try:
        plens = list(map(_PLEN.__getitem__, toks[1::2]))       # KeyError: "07", "129"
        is6 = [":" in a for a in addrs]
        codes = [p | V6 if v else p for p, v in zip(plens, is6, strict=True)]
        values = [_from_bytes(_pton(_AF6 if v else _AF4, a)) for a, v in zip(addrs, is6, strict=True)]
        masks = _MASKS
        if any([v & masks[c] for v, c in zip(values, codes, strict=True)]):
            return None                        # host bits set: reported row by row
    except (OSError, TypeError, KeyError):     # not an address; a length over 32 for IPv4
        return None
    if len(set(values)) != len(values) and not _no_duplicates(codes, values):
        return None
    return codes, values, counts


def _no_duplicates(codes: list[int], values: list[int]) -> bool:
    """No prefix twice in the block (a row listing one twice is refused; two rows sharing one
    are an overlap: both are reported row by row)."""
    return len(set(zip(codes, values, strict=False))) == len(codes)
