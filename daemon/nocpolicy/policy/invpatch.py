"""The cheap inventory reload: rows edited in place are patched into the previous load.

The usual change to a CRM export edits rows where they are: the same lines, a few of them
different. When the new file has as many lines as the previous one, it is compared with the
previous text a group of rows at a time (one ``startswith`` at C speed, no line split);
only a group that differs is split into lines, and each differing line must be a row's line
that is still a row. Then only those rows are split and checked (invbulk.check_block), and
the new Inventory is the previous one patched: the id index shared (or copied and patched
when an id changed), plans, packed prefixes and offsets copied as array slices around the
changed rows, the login index shared (or patched: a filter and slices), the prefix tables updated for the
changed rows, and the overlap check limited to the changed rows' prefixes
(customers.check_prefix_overlaps).

Anything else returns None and the reader reads the file against the previous load
(inventory._Reader): lines added or removed, a comment or blank line changed, a changed row
with a problem or an id already taken (the reader names every problem as
``file:line: column: reason`` exactly as a first load does).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from itertools import chain, compress, repeat
from operator import add, and_
from typing import TYPE_CHECKING

from .invbulk import check_block
from .invreload import delta_tables, fields_of
from .invtable import ROW_MASK, Inventory, Packed, login_key

if TYPE_CHECKING:
    from collections.abc import Sequence

GROUP = 256               # rows compared at once
SUBGROUP = 16             # then, in a group that differs
MAX_CHANGED = 10          # a reload changing more than 1/MAX_CHANGED of the rows is read in full


def diff_in_place(prev: Inventory, text: str) -> list[tuple[int, int, int]] | None:
    """The rows whose line changed, in order, as (row, new offset, change of the line's length);
    None when the new file is not the previous one with rows edited in place (every line is
    then accounted for: the same number of lines, the same lines but for rows' lines)."""
    old, offs = prev.text, prev.offsets
    n = len(offs)
    if not n or not text.startswith(old[:offs[0]]):
        return None
    out: list[tuple[int, int, int]] = []
    shift = 0
    for j in range(0, n, GROUP):
        k = min(j + GROUP, n)
        a, b = offs[j], offs[k] if k < n else len(old)
        if text.startswith(old[a:b], a + shift) and (k < n or len(text) == b + shift):
            continue
        for jj in range(j, k, SUBGROUP):     # a group that differs: its subgroups, then their lines
            kk = min(jj + SUBGROUP, n)
            a, b = offs[jj], offs[kk] if kk < n else len(old)
            if text.startswith(old[a:b], a + shift) and (kk < n or len(text) == b + shift):
                continue
            delta = _group(prev, text, jj, kk, a, b, a + shift, out)
            if delta is None or len(out) > n // MAX_CHANGED + 1:
                return None
            shift += delta
    return out if len(text) == len(old) + shift else None


def _group(prev: Inventory, text: str, j: int, k: int, a: int, b: int, pos: int,
           out: list[tuple[int, int, int]]) -> int | None:
    """Compare rows j..k-1 (old span a..b, new span from ``pos``) line by line; append the
    changed rows to ``out``; the change of the span's length, or None (not an in-place edit)."""
    old = prev.text
    if k == len(prev.offsets):
        old_lines, e = old[a:b].split("\n"), len(text)
        new_lines = text[pos:].split("\n")
    else:
        old_lines = old[a:b - 1].split("\n")
        m = len(old_lines)
        new_lines = text[pos:pos + 2 * (b - a) + 256].split("\n", m)
        if len(new_lines) <= m:
            return None                     # far longer lines: read in full
        e = pos + sum(map(len, new_lines[:m])) + m
        del new_lines[m]
    if len(new_lines) != len(old_lines):
        return None
    first, lines = prev.lines[j], prev.lines
    for t in compress(range(len(old_lines)), map(str.__ne__, old_lines, new_lines)):
        now = new_lines[t]
        r = j + t
        if r >= k or lines[r] != first + t:         # comment lines among the rows
            r = _row_at(lines, j, k, first + t)
        if r is None or not now.strip() or now.startswith("#"):
            return None                     # a comment or blank line changed, or a row removed
        out.append((r, pos + sum(map(len, new_lines[:t])) + t, len(now) - len(old_lines[t])))
    return (e - pos) - (b - a)


def _row_at(lines: array, j: int, k: int, line: int) -> int | None:
    r = bisect_left(lines, line, j, k)
    return r if r < k and lines[r] == line else None


def patch(prev: Inventory, rel: str, text: str, ix: tuple[int, ...]) -> Inventory | None:
    """The new inventory as the previous one patched for rows edited in place, or None."""
    if prev.read_tables is None or not prev.tables_exact:
        return None
    diff = diff_in_place(prev, text)
    if diff is None:
        return None
    rows = [r for r, _, _ in diff]
    lines = [_line(text, o) for _, o, _ in diff]
    fields = fields_of("\n".join(lines), lines)
    block = check_block(fields, ix) if fields else None
    if fields and block is None:
        return None                         # a problem: the reader names it
    ids = list(prev.ids)
    index = _patched_index(prev, rows, block.ids if block else [], ids)
    if index is None:
        return None
    changed = {prev.ids[r] for r in rows} | {ids[r] for r in rows}
    plans, plan_of = _patched_plans(prev, rows, block.plans if block else [])
    moved, touched = _prefixes_touched(prev, rows, block) if block else ([], [])
    packed = patch_packed(prev.packed, rows, block) if moved else prev.packed     # shared: no prefix changed
    same = bytearray(b"\x01") * len(ids)
    for r in rows:
        same[r] = 0
    inv = Inventory(rel, text, prev.cols, _patched_offsets(prev.offsets, diff), prev.lines, ids, index,
                    plans, plan_of, packed, frozenset(changed), prev, _handed_on(prev, index, same), same)
    inv.newlines = prev.newlines
    _patch_logins(inv, prev, rows, fields, ix[4])
    inv.prefix_changed = frozenset({prev.ids[r] for r in touched} | {ids[r] for r in touched})
    tables, exact = delta_tables(prev, prev.read_tables, inv.prefix_changed, index, packed)
    inv.tables = inv.read_tables = tables
    inv.tables_exact = exact
    inv.delta_probes = [pair for r in touched for pair in packed.of_row(r)]
    return inv


def _prefixes_touched(prev: Inventory, rows: list[int], block) -> tuple[list[int], list[int]]:
    """(the changed rows whose prefixes changed, those whose prefixes or id changed): a renamed
    customer's prefixes and tables stay as they are."""
    moved, touched, f = [], [], 0
    for r, c, cid in zip(rows, block.counts, block.ids, strict=True):
        if prev.packed.of_row(r) != list(zip(block.codes[f:f + c], block.values[f:f + c], strict=True)):
            moved.append(r)
            touched.append(r)
        elif prev.ids[r] != cid:
            touched.append(r)
        f += c
    return moved, touched


def _line(text: str, a: int) -> str:
    b = text.find("\n", a)
    return text[a:b if b >= 0 else len(text)].rstrip("\r")


def _patched_index(prev: Inventory, rows: list[int], new_ids: list[str], ids: list[str]) -> dict | None:
    """The id index: the previous one when no id changed, else a patched copy; None when a new id
    is taken (the reader reports the duplicate). Patches ``ids``."""
    moved = [(r, cid) for r, cid in zip(rows, new_ids, strict=True) if ids[r] != cid]
    if not moved:
        return prev.index
    index = dict(prev.index)
    for r, _ in moved:
        del index[ids[r]]
    for r, cid in moved:
        if cid in index:
            return None
        index[cid] = r
        ids[r] = cid
    return index


def _patched_plans(prev: Inventory, rows: list[int], raw: list[str]) -> tuple[list, array]:
    plans, plan_of = prev.plans, prev.plan_of
    new = [p for p in set(raw) if (p or None) not in plans]
    if new:
        plans = plans + new
    at = {p: i for i, p in enumerate(plans)}
    at[""] = 0
    want = [at[p] for p in raw]
    if all(plan_of[r] == w for r, w in zip(rows, want, strict=True)):
        return plans, plan_of
    plan_of = array(plan_of.typecode, plan_of)
    for r, w in zip(rows, want, strict=True):
        plan_of[r] = w
    return plans, plan_of


def patch_packed(p: Packed, rows: list[int], block) -> Packed:
    """The packed prefixes with the changed ``rows`` (ascending) replaced by ``block``'s: the
    same arrays patched in a copy when every changed row keeps its number of prefixes, else
    rebuilt from slices of the runs of unchanged rows."""
    counts = block.counts
    if all(p.start[r + 1] - p.start[r] == c for r, c in zip(rows, counts, strict=True)):
        new = Packed()
        new.code, new.hi, new.lo = array("H", p.code), array("Q", p.hi), array("Q", p.lo)
        new.start = p.start
        f = 0
        for r, c in zip(rows, counts, strict=True):
            for x, code, value in zip(range(p.start[r], p.start[r] + c), block.codes[f:f + c],
                                      block.values[f:f + c], strict=True):
                new.code[x], new.hi[x], new.lo[x] = code, value >> 64, value & 0xFFFFFFFFFFFFFFFF
            f += c
        return new
    return _rebuilt_packed(p, rows, block)


def _rebuilt_packed(p: Packed, rows: list[int], block) -> Packed:
    new, f, r0 = Packed(), 0, 0
    for r, c in zip([*rows, len(p.start) - 1], [*block.counts, 0], strict=True):
        if r > r0:                          # rows r0..r-1 unchanged
            x, y = p.start[r0], p.start[r]
            shift = len(new.code) - x
            new.code.extend(p.code[x:y])
            new.hi.extend(p.hi[x:y])
            new.lo.extend(p.lo[x:y])
            new.start.extend(map(add, p.start[r0 + 1:r + 1], repeat(shift)) if shift else p.start[r0 + 1:r + 1])
        if r == len(p.start) - 1:
            return new
        for code, value in zip(block.codes[f:f + c], block.values[f:f + c], strict=True):
            new.add(code, value)
        new.end_row()
        f, r0 = f + c, r + 1
    return new


def _patched_offsets(offsets: array, diff: list[tuple[int, int, int]]) -> array:
    """Each row's offset in the new text: the changed rows' from the diff, the others shifted by
    the change of length of the changed lines before them (one ``map`` over the column)."""
    shifts, r0, shift = [], 0, 0
    for r, _, delta in diff:
        shifts.append(repeat(shift, r - r0 + 1))
        r0, shift = r + 1, shift + delta
    shifts.append(repeat(shift, len(offsets) - r0))
    out = array("Q", map(add, offsets, chain.from_iterable(shifts)))
    for r, off, _ in diff:
        out[r] = off
    return out


def _handed_on(prev: Inventory, index: dict, same: bytearray) -> dict:
    """The Customers the previous load built whose row is unchanged."""
    out = {}
    for cid, c in prev._built.items():
        i = index.get(cid)
        if i is not None and same[i]:
            out[cid] = c
    return out


def _patch_logins(inv: Inventory, prev: Inventory, rows: list[int], fields: Sequence | None, i_log: int) -> None:
    """The login index: the previous one, or when a changed row's logins changed, the previous
    sorted keys without that row's and with its new ones (the same index a first load builds:
    a filter, then a sort that merges one long sorted run with a short one)."""
    inv._logins = prev._logins
    if i_log < 0 or not fields or prev._logins is None:
        return
    moved = {}
    for r, row in zip(rows, fields, strict=True):
        logins = row[i_log].split()
        if logins != _old_logins(prev, r, i_log):
            moved[r] = logins
    if not moved:
        return
    keys = prev._logins[0]
    gone = set(moved)
    kept = list(compress(keys, [r not in gone for r in map(and_, map(int, keys), repeat(ROW_MASK))]))
    kept.extend(login_key(s, r) for r, logins in moved.items() for s in logins)
    kept.sort()
    inv._logins = (array("d", kept),)


def _old_logins(prev: Inventory, r: int, i_log: int) -> list[str]:
    line = prev.line(r)
    row = line.split(",") if '"' not in line else fields_of(line, [line])[0]
    return row[i_log].split() if len(row) > i_log else []
