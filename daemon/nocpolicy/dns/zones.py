"""Blocked answers for names never seen before under a listed domain (DGA floods, issue 14).

Malware with a domain generation algorithm asks for random, distinct subdomains of its C&C
domains: ``kq3vz8x1.evil.example``, ``p0a7mbd2.evil.example``... Each name is new, so the
engine's per-name answer cache never hits, and each query used to be parsed, judged against
every list (twice), answered and cached as its own entry: ~15x the cost of a repeated name.

The unit here is the **parent** of the name (everything after its first label), as in the
detection log the unit is the list entry. When the slow path blocks ``x.P`` for a customer
and no list names ``x.P`` itself, the verdict came from ``P`` or one of its suffixes, so it
is the verdict of **every** child of ``P`` that no list names: one :class:`ZoneAnswer` per
customer and parent answers them all. A query ``y.P`` is then answered after:

* one dict lookup keyed by the query bytes minus its ID and first label (header flags and
  counts, the parent in wire form, type, class and whatever follows: EDNS), so only queries
  identical but for the first label share an entry;
* whether some list names the child itself (subtree, exact and allow entries: then its
  answer may differ, and the query takes the full path). When the entry was made, each
  list's parents bitmap (lists.NameSet.may_have_children) said whether any entry at all is
  a child of ``P``: if none is (and no list has exact entries), no child can be named and
  nothing is looked up per query (the usual case: ``P`` is the listed C&C domain); else the
  lower-cased child name is looked up in those entries (:func:`named`, a few hash probes).

The answer is the cached header and tail around the client's own question bytes (ID and
letter case preserved). Counts and up to ``SAMPLES`` names per client are kept in the entry
and drained into the stats and the detection log like the per-name entries.
"""

from __future__ import annotations

from .lists import _MASK, ListSet

ZONE_CACHE_MAX = 100_000    # parents per customer; cleared when full
SAMPLES = 5                 # distinct names kept per client between two drains (each second)
MAX_NAME = 255              # octets of a name in wire form (RFC 1035 2.3.4)


def probes(lists: ListSet) -> tuple[tuple, tuple, tuple]:
    """What :func:`named` and :func:`clean` look in: the 64 subtree shards of every list and
    of its allow exceptions, every exact-match dict, and the subtree sets themselves (their
    parents bitmaps). The containers themselves (not copies): entries added in place
    (``list update``) are seen, and the engine forgets its caches then."""
    shards, dicts, sets = [], [], []
    for lst in lists.all():
        shards.append(lst.index.subtree.shards)
        sets.append(lst.index.subtree)
        if lst.allow.subtree or lst.allow.exact:
            shards.append(lst.allow.subtree.shards)
            sets.append(lst.allow.subtree)
            dicts.append(lst.allow.exact)
        dicts.append(lst.index.exact)
    return tuple(shards), tuple(dicts), tuple(sets)


def clean(parent: str, dicts: tuple, sets: tuple) -> bool:
    """True if no list can name a child of ``parent``: no exact entries anywhere, and no
    subtree or allow entry is ``<label>.<parent>``."""
    return not any(dicts) and not any(s.may_have_children(parent) for s in sets)


def named(name: str, shards: tuple, dicts: tuple) -> bool:
    """Does any list (entry or allow exception) name ``name`` itself?"""
    h = hash(name) & _MASK
    for s in shards:
        if name in s[h]:
            return True
    for d in dicts:
        if name in d:
            return True
    return False


def zone_key(data: bytes) -> bytes | None:
    """The key of query ``data`` minus its ID and first label (None: no first label to drop)."""
    ln = data[12] if len(data) > 12 else 0
    if not 0 < ln < 64:
        return None
    return data[2:12] + data[13 + ln:]


class ZoneAnswer:
    """The blocked answer for every child of ``parent`` (see the module doc) for one customer.

    ``hdr``: the answer's header after the ID; ``qlen``: octets of the question after the
    first label (parent in wire form, type, class); ``tail``: records and OPT after it."""

    __slots__ = ("hdr", "tail", "qlen", "room", "dotparent", "rcode", "verdict", "n", "hosts", "clean")

    def __init__(self, out: bytes, qend: int, first_len: int, parent: str, rcode: int, verdict,
                 probes: tuple):
        self.clean = clean(parent, probes[1], probes[2])   # no child can be named: no look-ups
        self.hdr, self.tail = out[2:12], out[qend:]
        self.qlen = qend - 13 - first_len
        self.room = MAX_NAME - 1 - (self.qlen - 4)     # the longest first label a child may have
        self.dotparent, self.rcode, self.verdict = "." + parent, rcode, verdict
        self.n = 0
        self.hosts: dict[str, list] = {}     # client -> [count, sample names]

    def child(self, data: bytes, shards: tuple, dicts: tuple) -> str | None:
        """The name of query ``data`` (a child of ``parent``: the key matched) if this entry's
        answer is its answer; None when the full path must judge it."""
        ln = data[12]
        if ln > self.room:
            return None
        label = data[13:13 + ln]
        if 46 in label:                      # "a.b" as one label: its suffixes differ
            return None
        name = label.lower().decode("latin-1") + self.dotparent
        return None if not self.clean and named(name, shards, dicts) else name

    def reply(self, data: bytes) -> bytes:
        """The answer: ID, the cached header, the client's question, the cached records and OPT."""
        return data[:2] + self.hdr + data[12:13 + data[12] + self.qlen] + self.tail

    def count(self, host: str, name: str) -> bool:
        """Count one answer; True if the entry was clean (it must join the dirty list)."""
        h = self.hosts.get(host)
        if h is None:
            self.hosts[host] = [1, [name]]
        else:
            h[0] += 1
            s = h[1]
            if len(s) < SAMPLES and name not in s:
                s.append(name)
        self.n += 1
        return self.n == 1          # (the inlined copy in Engine.udp_handler does the same)
