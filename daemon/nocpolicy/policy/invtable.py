"""The CSV inventory in force, kept compact (a million customers in about 250 MB).

A row is kept as its line of the file (one shared ``str`` and an offset per row) and its
prefixes packed as integers; the plan is an index into the few distinct plans. A
:class:`~.customers.Customer` is built from its line only when someone asks for that
customer (``get``, iteration), and customers looked up by id are kept (``get`` returns the
same object again, and a reload hands it on while its line does not change).

The whole-table readers the daemon needs (ids, logins, prefixes) read the columns without
building a Customer per row. ``changed`` is what a reload changed against the inventory
``base`` it reused rows from: consumers rebuild only those customers.
"""

from __future__ import annotations

import csv
import ipaddress
import weakref
from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from itertools import accumulate, chain, compress, repeat
from operator import and_, lshift, or_, rshift, sub

from .customers import Customer
from .invrow import V6, build_customer
from .nodes import Loc

ROW_BITS = 24           # login keys: (29-bit hash of the login) << ROW_BITS | row, exact as a float
ROW_MASK = (1 << ROW_BITS) - 1
LOGIN_HASH = (1 << 29) - 1
KEPT = 65_536           # customers kept once built (get); the others are built again when asked


def prefix_of(code: int, value: int):
    """The ``ipaddress`` network of a packed prefix."""
    if code & V6:
        return ipaddress.IPv6Network((value, code & 0xFF))
    return ipaddress.IPv4Network((value, code & 0xFF))


class Packed:
    """Prefixes as parallel arrays: ``code`` (length | V6), value high and low 64 bits; row
    ``i``'s prefixes are entries ``start[i]:start[i+1]``; ``row`` (the row of each prefix) is
    derived from ``start`` when a whole-table reader asks for it."""

    __slots__ = ("code", "hi", "lo", "start", "_row")

    def __init__(self):
        self.code, self.hi, self.lo, self.start = array("H"), array("Q"), array("Q"), array("I", [0])
        self._row: array | None = None

    @property
    def row(self) -> array:
        """The row of each prefix (built once the rows are all in)."""
        if self._row is None or len(self._row) != len(self.code):
            start = self.start
            self._row = array("I", chain.from_iterable(map(repeat, range(len(start) - 1),
                                                           map(sub, start[1:], start[:-1]))))
        return self._row

    def add(self, code: int, value: int) -> None:
        self.code.append(code)
        self.hi.append(value >> 64)
        self.lo.append(value & 0xFFFFFFFFFFFFFFFF)

    def end_row(self) -> None:
        self.start.append(len(self.code))

    def extend(self, codes: list[int], values: list[int], counts: list[int]) -> None:
        """Rows at once: their prefixes in row order, ``counts[i]`` of them for row ``i``."""
        self.code.extend(codes)
        self.hi.extend(map(rshift, values, repeat(64)))
        self.lo.extend(map(and_, values, repeat(0xFFFFFFFFFFFFFFFF)))
        it = accumulate(counts, initial=self.start[-1])
        next(it)
        self.start.extend(it)

    def copy_row(self, other: Packed, j: int) -> None:
        a, b = other.start[j], other.start[j + 1]
        self.code.extend(other.code[a:b])
        self.hi.extend(other.hi[a:b])
        self.lo.extend(other.lo[a:b])
        self.end_row()

    def of_row(self, i: int) -> list[tuple[int, int]]:
        a, b = self.start[i], self.start[i + 1]
        return [(self.code[k], (self.hi[k] << 64) | self.lo[k]) for k in range(a, b)]

    def entries(self) -> Iterator[tuple[int, int, int]]:
        """(row, code, value) of every prefix."""
        return zip(self.row, self.code, map(or_, map(lshift, self.hi, repeat(64)), self.lo), strict=False)

    def keys(self, v6: bool) -> list[int]:
        """One int per IPv4 (or IPv6) prefix that sorts by first address, longest prefix first:
        ``((value << 8 | 255 - length) << 24) | row`` (customers.check_prefix_overlaps)."""
        sel = list(map(V6.__le__ if v6 else V6.__gt__, self.code))
        values = compress(map(or_, map(lshift, self.hi, repeat(64)), self.lo), sel) if v6 else \
            compress(self.lo, sel)
        lens = map(sub, repeat(255), map(and_, compress(self.code, sel), repeat(0xFF)))
        return list(map(or_, map(lshift, map(or_, map(lshift, values, repeat(8)), lens), repeat(24)),
                        compress(self.row, sel)))


class Inventory(Sequence):
    """The customers of one CSV inventory file (a Sequence of Customer, built on demand)."""

    def __init__(self, rel: str, text: str, cols: dict[str, int], offsets: array, lines: array,
                 ids: list[str], index: dict[str, int], plans: list, plan_of: array, packed: Packed,
                 changed: frozenset[str] | None = None, base: Inventory | None = None,
                 built: dict[str, Customer] | None = None, same: bytearray | None = None):
        self.rel, self.text, self.cols = rel, text, cols
        self.offsets, self.lines, self.ids, self.index = offsets, lines, ids, index
        self.plans, self.plan_of, self.packed = plans, plan_of, packed
        self.changed = changed          # ids added, removed or changed since ``base`` (None: no base)
        self._base = weakref.ref(base) if base is not None else None
        self._same = same               # row -> 1: the same line at the same place in ``base``
        self._built: dict[str, Customer] = built or {}
        self._logins: tuple[array] | None = None      # (sorted login keys,)
        self.tables: dict[int, dict[int, str]] | None = None   # built while read; see take_tables
        # the same tables, kept after take_tables (nobody writes to them once read: the taker
        # copies a table before changing it): a reload updates them for the rows it changed
        self.read_tables: dict[int, dict[int, str]] | None = None
        self.tables_exact = False
        self.newlines = -1              # "\n" in ``text`` (invpatch: a file with as many lines may be patched)
        # (code, value) of the prefixes of the rows a patched reload changed (the overlap check)
        self.delta_probes: list[tuple[int, int]] | None = None
        # ids whose prefixes (or their owner) a patched reload changed: a subset of ``changed`` (None: unknown)
        self.prefix_changed: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        c = self._built.get(self.ids[i])
        return c if c is not None else self._build(i)

    def __iter__(self) -> Iterator[Customer]:
        built = self._built
        for i, cid in enumerate(self.ids):
            c = built.get(cid)
            yield c if c is not None else self._build(i)

    def get(self, cid: str) -> Customer | None:
        """The customer ``cid`` (the same object on every call, for the first KEPT customers asked
        about), or None."""
        c = self._built.get(cid)
        if c is None:
            i = self.index.get(cid)
            if i is None:
                return None
            base = self._base() if self._base is not None and self._same[i] else None
            c = base.get(cid) if base is not None else self._build(i)
            if len(self._built) < KEPT:          # bounded: a command walking every customer keeps none
                self._built[cid] = c
        return c

    def customer(self, cid: str) -> Customer:
        """Customer ``cid`` built now (or the one ``get`` keeps), not kept: for a reader that needs it
        once (KeyError when there is no such customer)."""
        c = self._built.get(cid)
        return c if c is not None else self._build(self.index[cid])

    def base(self) -> Inventory | None:
        """The inventory this one reused rows from (``changed`` is against it), while it exists."""
        return self._base() if self._base is not None else None

    def line(self, i: int) -> str:
        a = self.offsets[i]
        b = self.text.find("\n", a)
        return self.text[a:b if b >= 0 else len(self.text)].rstrip("\r")

    def loc(self, i: int) -> Loc:
        return Loc(self.rel, self.lines[i])

    def plan(self, i: int) -> str | None:
        return self.plans[self.plan_of[i]]

    def index_logins(self, keys: list[float]) -> None:
        """The login index from the key of every login (login_key, as a float: exact below 2**53,
        and a list of floats sorts about twice as fast as one of large ints), sorted here in place."""
        keys.sort()
        self._logins = (array("d", keys),)

    def login_owner(self, login: str) -> str | None:
        """The id of the customer with ``login`` (first row listing it), or None. Looked up in a
        sorted array of keys (a 29-bit hash of the login, then the row: 8 bytes a login, keyed
        while the file was read), the row's own column confirming a match."""
        if self._logins is None or "logins" not in self.cols:
            return None
        keys = self._logins[0]
        h = hash(login) & LOGIN_HASH
        k, end = self.cols["logins"], float((h + 1) << ROW_BITS)
        for n in range(bisect_left(keys, float(h << ROW_BITS)), len(keys)):
            if keys[n] >= end:
                break
            row = int(keys[n]) & ROW_MASK
            if login in _fields(self.line(row))[k].split():
                return self.ids[row]
        return None

    def take_tables(self) -> list[tuple[int, int, dict[int, str]]]:
        """(family 4|6, prefix length, {network >> host bits: customer id}) for each length in use,
        for the DNS guard's address lookup (subscribers.prefixes.PrefixIndex): the tables built
        while the file was read, handed over once (the taker owns them: no copy), then built
        again from the packed columns."""
        tables, self.tables = self.tables, None
        if tables is None:
            return list(self.prefix_tables())
        return [(6 if code & V6 else 4, code & 0xFF, t) for code, t in sorted(tables.items())]

    def prefix_tables(self) -> Iterator[tuple[int, int, dict[int, str]]]:
        """The tables of take_tables, built from the packed columns."""
        p, ids = self.packed, self.ids
        for code in sorted(set(p.code)):
            sel = list(map(code.__eq__, p.code))
            v6, plen = code & V6, code & 0xFF
            values = map(or_, map(lshift, compress(p.hi, sel), repeat(64)), compress(p.lo, sel)) if v6 \
                else compress(p.lo, sel)
            keys = map(rshift, values, repeat((128 if v6 else 32) - plen))
            yield 6 if v6 else 4, plen, dict(zip(keys, map(ids.__getitem__, compress(p.row, sel)), strict=False))

    def _build(self, i: int) -> Customer:
        return build_customer(_fields(self.line(i)), self.cols, self.loc(i),
                              tuple(prefix_of(c, v) for c, v in self.packed.of_row(i)))


def _fields(line: str) -> list[str]:
    return next(csv.reader([line])) if '"' in line else line.split(",")


class Customers(Sequence):
    """The policy's customers: the YAML ones, then the inventory's (built on demand)."""

    def __init__(self, static: tuple[Customer, ...], inventory: Inventory):
        self.static, self.inventory = static, inventory

    def __len__(self) -> int:
        return len(self.static) + len(self.inventory)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        n = len(self.static)
        return self.static[i] if i < n else self.inventory[i - n]

    def __iter__(self) -> Iterator[Customer]:
        yield from self.static
        yield from self.inventory

    def __add__(self, other):
        return tuple(self) + tuple(other)


class CustomerIndex(Mapping):
    """customer id -> Customer over the YAML customers and an inventory (built on demand)."""

    def __init__(self, static: dict[str, Customer], inventory: Inventory):
        self.static, self.inventory = static, inventory

    def __getitem__(self, cid: str) -> Customer:
        c = self.static.get(cid)
        if c is None:
            c = self.inventory.get(cid) if isinstance(cid, str) else None
            if c is None:
                raise KeyError(cid)
        return c

    def __contains__(self, cid) -> bool:
        return cid in self.static or cid in self.inventory.index

    def __iter__(self) -> Iterator[str]:
        yield from self.static
        yield from (cid for cid in self.inventory.ids if cid not in self.static)

    def __len__(self) -> int:
        return len(self.static) + sum(1 for cid in self.inventory.ids if cid not in self.static) \
            if self.static else len(self.inventory)


def login_key(login: str, row: int) -> float:
    return float(((hash(login) & LOGIN_HASH) << ROW_BITS) | row)
