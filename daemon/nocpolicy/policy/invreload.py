"""An inventory reload that reuses the previous load (policy/inventory.py's reader).

The usual edit of a CRM export changes rows in place: the same line numbers, a few lines
different. A block of the new file at the same line numbers as rows of the previous load is
compared with the previous lines at C speed; only the changed lines are split and checked,
runs of unchanged rows take their ids, plans, packed prefixes and login keys from the
previous load as array slices, and the prefix tables are the previous ones updated for the
changed rows (copy on write per length). Blocks whose lines moved are matched by id
instead (inventory._Reader._unchanged).
"""

from __future__ import annotations

import csv
from bisect import bisect_left
from itertools import chain, compress, repeat
from operator import add, and_, itemgetter, not_
from typing import TYPE_CHECKING

from .invbulk import Block, check_block
from .invrow import V6
from .invtable import ROW_MASK

if TYPE_CHECKING:
    from .inventory import _Reader
    from .invtable import Inventory


def prev_login_keys(self: _Reader) -> list:
    """The previous load's login keys of the rows marked in ``logins_prev`` (same row number)."""
    prev, mask = self.prev, self.logins_prev
    if prev is None or prev._logins is None or not any(mask):
        return []
    keys = prev._logins[0]
    mask = mask + bytes(max(0, len(prev.ids) - len(mask)))
    return list(compress(keys, map(mask.__getitem__, map(and_, map(int, keys), repeat(ROW_MASK)))))


def delta_tables(prev: Inventory, base_tables: dict, changed, index: dict, packed
                 ) -> tuple[dict[int, dict[int, str]], bool]:
    """The previous load's prefix tables with the changed rows' old prefixes taken out and their
    new ones put in; only the tables of the lengths touched are copied (the others are shared,
    never written to). (tables, exact: no prefix claimed twice)."""
    tables, copied, exact = dict(base_tables), set(), True

    def table(code: int) -> dict[int, str]:
        if code not in copied:
            tables[code] = dict(tables.get(code, {}))
            copied.add(code)
        return tables[code]
    for cid in changed:
        j = prev.index.get(cid)
        for code, value in prev.packed.of_row(j) if j is not None else ():
            t, key = table(code), value >> ((128 if code & V6 else 32) - (code & 0xFF))
            if t.get(key) == cid:
                del t[key]
    for cid in changed:
        i = index.get(cid)
        for code, value in packed.of_row(i) if i is not None else ():
            t, key = table(code), value >> ((128 if code & V6 else 32) - (code & 0xFF))
            exact = exact and key not in t
            t[key] = cid
    tables = {code: t for code, t in tables.items() if t}
    return tables, exact and sum(map(len, tables.values())) == len(packed.code)


def aligned(self: _Reader, kept: list[str], first: int, contiguous: bool) -> tuple[int, list[bool]] | None:
    """On a reload, when the block's lines are data lines at the same line numbers as rows
    ``j0``... of the previous load (the usual edit: rows changed in place): (j0, for each row,
    whether its line is unchanged), compared at C speed. Else None (rows compared by id)."""
    prev, k = self.prev, len(kept)
    if not contiguous or not k:
        return None
    j0 = bisect_left(prev.lines, first)
    if j0 + k > len(prev.lines) or prev.lines[j0] != first or prev.lines[j0 + k - 1] != first + k - 1:
        return None
    a, last = prev.offsets[j0], prev.offsets[j0 + k - 1]
    b = prev.text.find("\n", last)
    old = prev.text[a:b if b >= 0 else len(prev.text)].split("\n")
    if len(old) != k:                    # a comment or blank line between the previous rows
        return None
    if "\r" in prev.text[a:b if b >= 0 else len(prev.text)]:
        old = list(map(str.rstrip, old, repeat("\r")))
    return j0, list(map(str.__eq__, kept, old))


def reuse_block(self: _Reader, chunk: str, kept: list[str], j0: int, eq: list[bool]) -> tuple[Block | None, list | None]:
    """The block's ids and plans from the previous load's columns (rows ``j0``...), only its
    changed rows split and checked (check_block; None: one of them needs checking row by
    row); their prefixes are copied afterwards (_copy_packed). When no row moved, only the
    changed rows' logins are keyed (the others' are the previous load's: the rows listed)."""
    prev, k = self.prev, len(kept)
    changed = list(compress(range(k), map(not_, eq)))
    in_place = j0 == len(self.ids)
    rows = fields_of(chunk, kept if not in_place else [kept[i] for i in changed])
    if rows is None:
        return None, None
    fresh = check_block([rows[i] for i in changed] if not in_place else rows, self.ix) if changed \
        else Block([], [], [], [], [])
    if fresh is None:
        return None, None
    logins = () if self.ix[4] < 0 else list(map(itemgetter(self.ix[4]), rows))
    out = Block(prev.ids[j0:j0 + k], list(map(prev.plans.__getitem__, prev.plan_of[j0:j0 + k])),
                fresh.codes, fresh.values, fresh.counts, logins)
    for b, i in enumerate(changed):
        out.ids[i], out.plans[i] = fresh.ids[b], fresh.plans[b]
    return out, changed if in_place else None


def copy_packed(self: _Reader, j0: int, eq: list[bool], block: Block) -> None:
    """Append the block's prefixes: runs of unchanged rows copied from the previous load's
    arrays (slices, no per-row work), the changed rows' from ``block`` (_reuse_block)."""
    p, start, new = self.prev.packed, self.prev.packed.start, self.packed
    k, r, f = len(eq), 0, 0                   # next row to copy; next prefix of the changed rows
    for b, i in enumerate(chain(compress(range(k), map(not_, eq)), (k,))):
        if i > r:                             # rows r..i-1 unchanged
            x, y = start[j0 + r], start[j0 + i]
            shift = len(new.code) - x
            new.code.extend(p.code[x:y])
            new.hi.extend(p.hi[x:y])
            new.lo.extend(p.lo[x:y])
            new.start.extend(map(add, start[j0 + r + 1:j0 + i + 1], repeat(shift)) if shift else
                             start[j0 + r + 1:j0 + i + 1])
        if i == k:
            return
        n = block.counts[b]
        for code, value in zip(block.codes[f:f + n], block.values[f:f + n], strict=True):
            new.add(code, value)
        new.end_row()
        r, f = i + 1, f + n


def fields_of(chunk: str, kept: list[str]) -> list[list[str]] | None:
    """The fields of each line, or None (a CSV quoting error: the block is read row by row)."""
    try:
        return list(map(str.split, kept, repeat(","))) if '"' not in chunk \
            else [ln.split(",") if '"' not in ln else next(csv.reader([ln])) for ln in kept]
    except csv.Error:
        return None
