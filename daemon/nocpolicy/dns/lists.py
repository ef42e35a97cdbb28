"""Compiled block lists and the suffix matcher (pure, no I/O).

A :class:`DomainIndex` holds the entries of one list in plain sets/dicts of
lower-case names without the trailing dot (A-label form):

* ``subtree`` -- the name *and every name below it* (plain domain lists,
  Maltrail trails, policy ``allow`` exceptions);
* ``exact``   -- the name only (hosts files, RPZ ``x``);
* ``wild``    -- strictly below the name, not the name itself (RPZ ``*.x``).

``exact``/``wild`` map to an action override (RPZ: ``nxdomain``, ``nodata``,
``passthru``, ``refused``, ``sinkhole:<addr>``) or ``None`` for the list's own
action. Matching walks the suffixes of the query name once, most specific first,
so the most specific entry wins (RPZ precedence: exact before wildcards, longer
wildcards before shorter). Lookups are a handful of set probes: no tries, no
regexes, fine for a million entries (~110 MB, ~1.5 s to load).

Use :func:`suffixes` once per name and pass the result to every list::

    sfx = suffixes(normalize("WWW.Evil.Example."))    # ['www.evil.example', 'evil.example', 'example']
    hit = index.match(sfx)                              # Match(entry='evil.example', action=None) or None
"""

from __future__ import annotations

from dataclasses import dataclass, field


def normalize(name: str) -> str:
    """Lower-case, without the trailing dot (the form every index and verdict uses)."""
    return name.strip().lower().rstrip(".")


def suffixes(name: str) -> list[str]:
    """``a.b.c`` -> ``['a.b.c', 'b.c', 'c']`` (``name`` already normalized)."""
    out = [name]
    i = name.find(".")
    while i >= 0:
        name = name[i + 1:]
        out.append(name)
        i = name.find(".")
    return out


SHARDS = 64
_MASK = SHARDS - 1
PARENT_BITS = 1 << 21           # the parents bitmap: 256 KiB per non-empty set
_PMASK = PARENT_BITS - 1


class NameSet:
    """A set of names split over 64 dicts (name -> None) by hash.

    Two reasons, both about never pausing answers while a big list is (re)built:
    growing a million-name table resizes one small shard at a time (one big table
    holds the interpreter ~0.1 s per resize), and a dict of strings is not tracked
    by the cyclic garbage collector (a set is), so a full collection does not walk
    a million entries (~50 ms) in the middle of serving.

    ``parents`` is a bitmap of the parents of the names (``b.c`` for ``a.b.c``), indexed by
    hash: :meth:`may_have_children` answers "is some name in the set a child of P?" with no
    false negatives (false positives, and names discarded since, only cost a closer look).
    The DNS engine uses it to answer a DGA flood of never-seen children of a listed name
    without looking each of them up (zones.py).
    """

    __slots__ = ("shards", "parents")

    def __init__(self, names=()):
        self.shards: list[dict[str, None]] = [{} for _ in range(SHARDS)]
        self.parents: bytearray | None = None       # made on the first name with a parent
        for n in names:
            self.add(n)

    def add(self, name: str) -> None:
        self.shards[hash(name) & _MASK][name] = None
        i = name.find(".")
        if i >= 0:
            bits = self.parents
            if bits is None:
                bits = self.parents = bytearray(PARENT_BITS >> 3)
            h = hash(name[i + 1:]) & _PMASK
            bits[h >> 3] |= 1 << (h & 7)

    def may_have_children(self, parent: str) -> bool:
        """False only if no name in the set is ``<label>.<parent>``."""
        bits = self.parents
        if bits is None:
            return False
        h = hash(parent) & _PMASK
        return bool(bits[h >> 3] & (1 << (h & 7)))

    def discard(self, name: str) -> None:
        self.shards[hash(name) & _MASK].pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self.shards[hash(name) & _MASK]

    def __len__(self) -> int:
        return sum(map(len, self.shards))

    def __bool__(self) -> bool:
        # without this, truth would call __len__ (64 shard sizes summed in Python): it was
        # evaluated for every newly seen blocked name (CompiledList.match) and cost ~20 us
        return any(self.shards)

    def __iter__(self):
        for s in self.shards:
            yield from s

    def update(self, other) -> None:
        self.update_many(other)

    def update_many(self, names) -> None:
        """:meth:`add` for each name, inlined: a reload inserts a million (listbuild.py)."""
        shards, bits = self.shards, self.parents
        for name in names:
            shards[hash(name) & _MASK][name] = None
            i = name.find(".")
            if i >= 0:
                if bits is None:
                    bits = self.parents = bytearray(PARENT_BITS >> 3)
                h = hash(name[i + 1:]) & _PMASK
                bits[h >> 3] |= 1 << (h & 7)


@dataclass(frozen=True, slots=True)
class Match:
    entry: str               # as written in the list: "evil.example", "*.evil.example"
    action: str | None       # per-entry override (RPZ) or None for the list's action


@dataclass(slots=True)
class DomainIndex:
    subtree: NameSet = field(default_factory=NameSet)
    exact: dict[str, str | None] = field(default_factory=dict)
    wild: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.subtree, NameSet):
            self.subtree = NameSet(self.subtree)

    def __len__(self) -> int:
        return len(self.subtree) + len(self.exact) + len(self.wild)

    def match(self, sfx: list[str]) -> Match | None:
        """Most specific entry covering the name whose suffixes are ``sfx``; passthru -> None."""
        exact, wild, shards = self.exact, self.wild, self.subtree.shards
        if exact:
            act = exact.get(sfx[0], 0)
            if act != 0:
                return None if act == "passthru" else Match(sfx[0], act)
        first = True
        for s in sfx:
            if s in shards[hash(s) & _MASK]:
                return Match(s, None)
            if not first and wild:
                act = wild.get(s, 0)
                if act != 0:
                    return None if act == "passthru" else Match("*." + s, act)
            first = False
        return None

    def covers(self, sfx: list[str]) -> str | None:
        """The subtree entry covering the name, for allow exceptions."""
        shards = self.subtree.shards
        for s in sfx:
            if s in shards[hash(s) & _MASK]:
                return s
        return None

    def merge(self, other: DomainIndex) -> None:
        self.subtree.update(other.subtree)
        self.exact.update(other.exact)
        self.wild.update(other.wild)

    def entries(self) -> list[str]:
        """Every entry, as written (for persistence and diagnostics)."""
        return (sorted(self.subtree) + sorted(self.exact) + sorted("*." + w for w in self.wild))


@dataclass(frozen=True, slots=True)
class CompiledList:
    """One policy list with its entries, ready for matching."""

    id: str
    cls: str                           # mandatory | security | optional
    action: str                        # nxdomain | nodata | refused | sinkhole
    index: DomainIndex
    allow: DomainIndex                 # policy allow exceptions (subtree semantics)
    sinkhole_a: str | None = None
    sinkhole_aaaa: str | None = None

    def match(self, sfx: list[str]) -> Match | None:
        hit = self.index.match(sfx)
        if hit is None:
            return None
        if self.allow.subtree and self.allow.covers(sfx) is not None:
            return None
        return hit


@dataclass(frozen=True, slots=True)
class ListSet:
    """Every list, grouped by class in enforcement order (mandatory > security > optional)."""

    mandatory: tuple[CompiledList, ...] = ()
    security: tuple[CompiledList, ...] = ()
    optional: tuple[CompiledList, ...] = ()

    @classmethod
    def of(cls, lists) -> ListSet:
        lists = list(lists)
        return cls(tuple(x for x in lists if x.cls == "mandatory"),
                   tuple(x for x in lists if x.cls == "security"),
                   tuple(x for x in lists if x.cls == "optional"))

    def all(self) -> tuple[CompiledList, ...]:
        return self.mandatory + self.security + self.optional

    def get(self, list_id: str) -> CompiledList | None:
        for x in self.all():
            if x.id == list_id:
                return x
        return None
