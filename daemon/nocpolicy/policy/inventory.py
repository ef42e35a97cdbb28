"""The customer inventory as CSV (``inventory: {file: customers.csv}``): an ISP's CRM
export of up to millions of customers, validated like YAML (``file:line: column: reason``).

Columns (header line required, any order, unknown columns refused; see docs/policy.md):
``id``, ``name`` (required), ``plan``, ``prefixes``, ``logins``, ``tags``, ``nodes``
(space-separated lists), ``contact`` (an e-mail address, an http(s) webhook URL or
``mqtt:<topic>``). One customer per line; fields may be quoted ("a, b").

The rows are validated one by one and kept compact (invtable.Inventory: the line, the
prefixes packed as integers); a Customer object is built only for the customers someone
asks about. Rows unchanged since the previous load (same bytes, same id) are not validated
again, and the Inventory says which ids a reload changed, so a reload that changes 1% of
rows checks 1% of them and consumers rebuild 1% of what they derive. When the rows were
edited in place (the same lines, some different), the previous load is patched instead
(invpatch.py: no pass over the unchanged rows beyond comparing the text at C speed).
"""

from __future__ import annotations

import csv
import hashlib
import re
from array import array
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, repeat
from operator import add, not_, rshift
from pathlib import Path

from .fields import Obj, Problems, as_text, obj
from .invbulk import Block, check_block
from .invpatch import patch
from .invreload import aligned, copy_packed, delta_tables, fields_of, prev_login_keys, reuse_block
from .invrow import COLUMNS, V6, RowError, check_row, column_indexes
from .invtable import LOGIN_HASH, ROW_BITS, Inventory, Packed, login_key
from .nodes import Loc

REQUIRED = ("id", "name")
MAX_ROWS = 5_000_000
BLOCK = 1 << 20               # characters of the file checked column-wise at once (about 8,000 rows)
_WHITESPACE = re.compile(r"\s")
MAX_PROBLEMS = 1000           # more are summarised: a broken export should not flood the log


@dataclass(frozen=True)
class InventorySettings:
    file: str | None = None
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


def _inventory(o: Obj) -> InventorySettings:
    return InventorySettings(file=o.req("file", as_text), loc=o.node.loc)


read_inventory_settings = obj(_inventory)


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
                   previous: Inventory | None = None) -> tuple[Inventory | None, str]:
    """(the inventory, or None when it is unreadable or its header is wrong; sha256 of the file)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        problems.add(Loc(rel, 0), "inventory.file", f"cannot read: {exc.strerror}")
        return None, ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.add(Loc(rel, 0), "inventory.file", f"not UTF-8: {exc}")
        return None, digest
    del data
    first = text.find("\n")
    cols = _header(text[:first if first >= 0 else len(text)].lstrip("\ufeff").rstrip("\r"), rel, problems)
    if cols is None:
        return None, digest
    if previous is not None and previous.cols == cols:    # rows edited in place: the previous load patched
        inv = patch(previous, rel, text, column_indexes(cols))    # (as many lines as the previous file)
        if inv is not None:
            return inv, digest
    newlines = text.count("\n")
    if newlines >= MAX_ROWS:
        problems.add(Loc(rel, 0), "inventory.file", f"{newlines + 1} lines: at most {MAX_ROWS} rows")
        return None, digest
    inv = _Reader(rel, text, cols, problems, previous).read(first + 1 if first >= 0 else len(text))
    inv.newlines = newlines
    return inv, digest


class _Reader:
    """One pass over the rows: validated (or reused from ``previous``) into compact columns."""

    def __init__(self, rel: str, text: str, cols: dict[str, int], problems: Problems, previous: Inventory | None):
        self.rel, self.text, self.cols, self.problems = rel, text, cols, problems
        self.prev = previous if previous is not None and previous.cols == cols else None
        self.ix = column_indexes(cols)
        self.offsets, self.lines, self.ids, self.index = array("Q"), array("I"), [], {}
        self.plans, self.plan_ix, self.plan_of = [None], {None: 0, "": 0}, array("H")
        self.packed, self.built, self.changed, self.errors = Packed(), {}, set(), 0
        self.tables: dict[int, dict[int, str]] = {}    # prefix code -> {network >> host bits: id}
        # a reload: the previous load's tables, updated for the changed rows at the end (copy on write)
        self.base_tables = self.prev.read_tables if self.prev is not None else None
        self.n_prefixes = 0
        self.same = bytearray()          # row -> 1: reused from ``previous`` at the same line
        self.login_keys: list[float] = []  # invtable.login_key of each login
        self.logins_prev = bytearray()   # row -> 1: its login keys are the previous load's (same row)

    def read(self, pos: int) -> Inventory:
        text, n, end_all = self.text, 1, len(self.text)
        while pos < end_all:                  # blocks of about BLOCK characters, whole lines
            end = text.find("\n", min(pos + BLOCK, end_all))
            end = end_all if end < 0 else end
            chunk = text[pos:end]
            lines = chunk.split("\n")
            if not self._block(chunk, lines, n + 1, pos):
                self._one_by_one(lines, n + 1, pos)
            n += len(lines)
            pos = end + 1
        if self.errors > MAX_PROBLEMS:
            self.problems.add(Loc(self.rel, 0), "inventory.file",
                              f"{self.errors - MAX_PROBLEMS} more bad rows not listed")
        prev = self.prev
        if prev is not None:
            self.changed.update(prev.index.keys() - self.index.keys())
            self._hand_on(prev)
        inv = Inventory(self.rel, text, self.cols, self.offsets, self.lines, self.ids, self.index, self.plans,
                        self.plan_of, self.packed, frozenset(self.changed) if prev is not None else None,
                        prev, self.built, self.same)
        keys, self.login_keys = self.login_keys, []
        keys += prev_login_keys(self)
        inv.index_logins(keys)
        if self.base_tables is None:
            tables, exact = self.tables, sum(map(len, self.tables.values())) == self.n_prefixes
        elif len(self.changed) <= max(1000, len(self.ids) // 10):
            tables, exact = delta_tables(self.prev, self.base_tables, self.changed, self.index, inv.packed)
        else:
            tables = {p + (V6 if f == 6 else 0): t for f, p, t in inv.prefix_tables()}
            exact = sum(map(len, tables.values())) == len(self.packed.code)
        inv.tables = inv.read_tables = tables   # exact: no prefix listed twice (else the overlap check says so)
        inv.tables_exact = exact
        return inv


    def _hand_on(self, prev: Inventory) -> None:
        """Keep the Customers the previous load built whose line is the same at the same place."""
        index, same, built = self.index, self.same, self.built
        for cid, c in prev._built.items():
            i = index.get(cid)
            if i is not None and same[i] and cid not in built:
                built[cid] = c

    def _one_by_one(self, lines: list[str], n: int, pos: int) -> None:
        for line in lines:
            if line.strip() and not line.startswith("#"):
                self._row(line.rstrip("\r"), n, pos)
            n += 1
            pos += len(line) + 1

    def _block(self, chunk: str, lines: list[str], n0: int, pos0: int) -> bool:
        """Take a block of lines through the column-wise fast path (invbulk); False: some row needs
        checking one by one (a problem to report, or a duplicate id). On a reload, rows whose line
        is unchanged since the previous load are taken from it unchecked."""
        if lines and not lines[-1]:
            lines = lines[:-1]                  # the file's last newline
        keep, kept = self._data_lines(chunk, lines)
        js = eq = rows = login_rows = None
        same_at = aligned(self, kept, n0 + keep[0] if keep else n0, len(keep) == len(lines)) \
            if self.prev is not None else None
        if same_at is not None:
            block, login_rows = reuse_block(self, chunk, kept, *same_at)
            eq = same_at[1]
        elif (rows := fields_of(chunk, kept)) is None:
            return False
        elif self.prev is None:
            block = check_block(rows, self.ix)
        else:
            js = self._unchanged(rows, kept)
            fresh = check_block([r for r, j in zip(rows, js, strict=True) if j < 0], self.ix) \
                if -1 in js else Block([], [], [], [], [])
            block = self._merge(rows, js, fresh) if fresh is not None else None
        if block is None or not self._index(block.ids):
            return False
        offsets = list(accumulate(map(add, map(len, lines), repeat(1)), initial=pos0))
        self.ids.extend(block.ids)
        if isinstance(keep, range):             # every line of the block is a row
            offsets.pop()
            self.offsets.extend(offsets)
            self.lines.extend(range(n0, n0 + len(keep)))
        else:
            self.offsets.extend(map(offsets.__getitem__, keep))
            self.lines.extend(map(add, keep, repeat(n0)))
        for raw in set(block.plans):
            if raw not in self.plan_ix:
                self.plan_ix[raw] = len(self.plans)
                self.plans.append(raw)
        self.plan_of.extend(map(self.plan_ix.__getitem__, block.plans))
        if eq is not None:
            copy_packed(self, *same_at, block)
        else:
            self.packed.extend(block.codes, block.values, block.counts)
            if self.base_tables is None:
                self._tabulate_block(block)
        base = len(self.ids) - len(block.ids)
        self._logins(block.logins, range(base, base + len(block.ids)) if login_rows is None else
                     list(map(add, login_rows, repeat(base))))
        self.logins_prev.extend(bytes(len(block.ids)) if login_rows is None else eq)
        if eq is not None:
            self.same.extend(eq)
            self.changed.update(compress(block.ids, map(not_, eq)))
        elif js is None:
            self.same.extend(bytes(len(block.ids)))
        else:
            self._compare(block.ids, js, [n0 + i for i in keep])
        return True


    @staticmethod
    def _data_lines(chunk: str, lines: list[str]):
        """(indexes of the data lines, those lines without a trailing CR)."""
        if "\n\n" in chunk or "\n#" in chunk or chunk[:1] in ("#", "\n"):
            keep = [i for i, line in enumerate(lines) if line and line[0] != "#" and not line.isspace()]
            kept = [lines[i] for i in keep]
        else:
            keep, kept = range(len(lines)), lines
        if "\r" in chunk:
            kept = list(map(str.rstrip, kept, repeat("\r")))
        return keep, kept

    def _unchanged(self, rows: list[list[str]], lines: list[str]) -> list[int]:
        """For each row, its row in the previous load if its line is the same there, else -1."""
        prev, i_id, out = self.prev, self.ix[0], []
        for row, line in zip(rows, lines, strict=True):
            j = prev.index.get(row[i_id].strip()) if len(row) > i_id else None
            out.append(j if j is not None and prev.line(j) == line else -1)
        return out

    def _merge(self, rows: list[list[str]], js: list[int], fresh: Block) -> Block:
        """The block in row order: unchanged rows from the previous load, the others from ``fresh``."""
        prev, i_log = self.prev, self.ix[4]
        out = Block([], [], [], [], [], tuple(r[i_log] for r in rows) if i_log >= 0 else ())
        b = k = 0
        for j in js:
            if j >= 0:
                pairs = prev.packed.of_row(j)
                out.ids.append(prev.ids[j])
                out.plans.append(prev.plan(j) or "")
                out.codes.extend(c for c, _ in pairs)
                out.values.extend(v for _, v in pairs)
                out.counts.append(len(pairs))
                continue
            n = fresh.counts[b]
            out.ids.append(fresh.ids[b])
            out.plans.append(fresh.plans[b])
            out.codes.extend(fresh.codes[k:k + n])
            out.values.extend(fresh.values[k:k + n])
            out.counts.append(n)
            b, k = b + 1, k + n
        return out

    def _tabulate(self, codes: list[int], values: list[int], owners: list[str]) -> None:
        """Add prefixes to the per-length tables (the DNS guard's address lookup and the overlap check);
        on a reload they are the previous ones updated at the end (_delta_tables)."""
        self.n_prefixes += len(codes)
        if self.base_tables is not None:
            return
        distinct = set(codes)
        for code in distinct:
            table = self.tables.setdefault(code, {})
            if len(distinct) == 1:
                vals, own = values, owners
            else:
                sel = list(map(code.__eq__, codes))
                vals, own = compress(values, sel), compress(owners, sel)
            table.update(zip(map(rshift, vals, repeat((128 if code & V6 else 32) - (code & 0xFF))), own,
                             strict=False))

    def _tabulate_block(self, block: Block) -> None:
        """_tabulate a block; when every row lists the same kinds of prefix in the same order (the
        usual export: one IPv4 and one IPv6 prefix), each table takes a column slice and the ids."""
        counts, codes = block.counts, block.codes
        k = counts[0] if counts else 0
        if not k or counts.count(k) != len(counts) or \
                any(codes[p::k].count(codes[p]) != len(counts) for p in range(k)):
            self._tabulate(codes, block.values, list(chain.from_iterable(map(repeat, block.ids, counts))))
            return
        self.n_prefixes += len(codes)
        for p in range(k):
            code = codes[p]
            shift = (128 if code & V6 else 32) - (code & 0xFF)
            self.tables.setdefault(code, {}).update(zip([v >> shift for v in block.values[p::k]], block.ids,
                                                        strict=True))

    def _logins(self, column, rows) -> None:
        """Key the logins of ``rows`` (column: their logins fields) for the login index (login_key)."""
        joined = "".join(column)
        if _WHITESPACE.search(joined) is None:          # one login (or none) a row, as is
            m, b = LOGIN_HASH, ROW_BITS
            self.login_keys.extend([float(((hash(s) & m) << b) | r)
                                    for s, r in zip(column, rows, strict=True) if s])
            return
        for row, logins in zip(rows, column, strict=False):
            self.login_keys.extend(login_key(s, row) for s in logins.split())

    def _index(self, ids: list[str]) -> bool:
        """Index the block's ids; False (and nothing indexed) if one is taken or listed twice."""
        index, base = self.index, len(self.ids)
        if not index.keys().isdisjoint(ids):
            return False
        before = len(index)
        index.update(zip(ids, range(base, base + len(ids)), strict=False))
        if len(index) == before + len(ids):
            return True
        for cid in ids:                         # undo: the block is checked row by row
            if index.get(cid, -1) >= base:
                del index[cid]
        return False

    def _compare(self, ids: list[str], js: list[int], numbers: list[int]) -> None:
        """Note which rows changed since the previous load (``js``: _unchanged) and hand on the
        Customers built from unchanged lines at the same place."""
        prev, built = self.prev, self.prev._built
        for cid, j, n in zip(ids, js, numbers, strict=True):
            if j < 0:
                self.changed.add(cid)
                self.same.append(0)
                continue
            same = prev.lines[j] == n
            self.same.append(same)
            c = built.get(cid) if same else None
            if c is not None:
                self.built[cid] = c

    def _row(self, line: str, n: int, pos: int) -> None:
        try:
            row = next(csv.reader([line])) if '"' in line else line.split(",")
            cid, plan, prefixes = self._reuse(line, row, n) or check_row(row, self.ix)
        except (RowError, csv.Error) as exc:
            self._problem(n, getattr(exc, "column", "(row)"), str(exc))
            return
        first = self.index.get(cid)
        if first is not None:
            self._problem(n, f"customers[id={cid}]",
                          f"duplicate id {cid!r} (first defined at {self.rel}:{self.lines[first]})")
            return
        self.index[cid] = len(self.ids)
        if self.ix[4] >= 0:
            self._logins([row[self.ix[4]]], [len(self.ids)])
        self.ids.append(cid)
        self.logins_prev.append(0)
        self.offsets.append(pos)
        self.lines.append(n)
        p = self.plan_ix.get(plan)
        if p is None:
            p = self.plan_ix[plan] = len(self.plans)
            self.plans.append(plan)
        self.plan_of.append(p)
        if prefixes is not None:
            for code, value in prefixes:
                self.packed.add(code, value)
            self.packed.end_row()
        pairs = prefixes if prefixes is not None else self.packed.of_row(len(self.ids) - 1)
        self._tabulate([c for c, _ in pairs], [v for _, v in pairs], [cid] * len(pairs))
        if self.prev is not None and prefixes is not None:
            self.changed.add(cid)
        self.same.append(prefixes is None and self.prev.lines[self.prev.index[cid]] == n)

    def _reuse(self, line: str, row: list[str], n: int):
        """(id, plan, None) of a row whose line is unchanged since the previous load (its prefixes
        copied over, its Customer handed on), or None."""
        prev = self.prev
        if prev is None or len(row) <= self.ix[0]:
            return None
        cid = row[self.ix[0]].strip()
        j = prev.index.get(cid)
        if j is None or cid in self.index or prev.line(j) != line:
            return None
        self.packed.copy_row(prev.packed, j)
        c = prev._built.get(cid)
        if c is not None and c.loc.line == n:
            self.built[cid] = c
        return cid, prev.plan(j), None

    def _problem(self, n: int, column: str, reason: str) -> None:
        self.errors += 1
        if self.errors <= MAX_PROBLEMS:
            self.problems.add(Loc(self.rel, n), column, reason)
