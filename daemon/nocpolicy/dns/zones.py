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

* one dict lookup keyed by the query bytes after its first label (the parent in wire form,
  type, class and whatever follows: EDNS) and a comparison of the header after the ID (flags
  and counts, kept in the entry), so only queries identical but for the ID and the first
  label share an entry;
* whether some list names the child itself (subtree, exact and allow entries: then its
  answer may differ, and the query takes the full path). When the entry was made, each
  list's parents bitmap (lists.NameSet.may_have_children) said whether any entry at all is
  a child of ``P``: if none is (and no list has exact entries), no child can be named and
  nothing is looked up per query (the usual case: ``P`` is the listed C&C domain); else the
  lower-cased child name is looked up in those entries (:func:`named`, a few hash probes).

The answer is the client's ID and first label (letter case preserved) around the cached
header and rest (the parent: the same bytes as the query's, as the key matched). Counts and
up to ``SAMPLES`` first labels per client are kept in the entry (raw: decoding waits for the
drain) and drained into the stats and the detection log like the per-name entries.
"""

from __future__ import annotations

from functools import partial

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
    """The key of query ``data``: everything after its first label (None: no first label to
    drop). The header (after the ID) is kept in the entry and compared on a hit."""
    ln = data[12] if len(data) > 12 else 0
    if not 0 < ln < 64:
        return None
    return data[13 + ln:]


class ZoneAnswer:
    """The blocked answer for every child of ``parent`` (see the module doc) for one customer.

    ``qhdr``: the header (after the ID) of the queries it answers; ``hdr``: the answer's
    header after the ID; ``rest``: the answer after the first label (the parent in wire form,
    type, class, records and OPT).

    Counts since the last drain: ``n`` answers in all; ``host`` the first client (None: none
    since the drain) and ``labels`` up to ``SAMPLES`` first labels it asked, as they came on
    the wire (length octet first); ``others`` the same for any other client, ``client ->
    [count, labels]`` (None while there is none: one client per entry is the usual case, and
    the hot path then touches no dict). The drain turns labels into names (:meth:`names`)."""

    __slots__ = ("qhdr", "hdr", "rest", "qlen", "room", "dotparent", "rcode", "verdict", "n", "host",
                 "labels", "others", "clean")

    def __init__(self, out: bytes, qend: int, first_len: int, parent: str, rcode: int, verdict,
                 probes: tuple, qhdr: bytes = b""):
        self.clean = clean(parent, probes[1], probes[2])   # no child can be named: no look-ups
        self.qhdr, self.hdr, self.rest = qhdr, out[2:12], out[13 + first_len:]
        self.qlen = qend - 13 - first_len
        self.room = MAX_NAME - 1 - (self.qlen - 4)     # the longest first label a child may have
        self.dotparent, self.rcode, self.verdict = "." + parent, rcode, verdict
        self.n = 0
        self.host: str | None = None
        self.labels: list | None = None
        self.others: dict[str, list] | None = None

    def child(self, data: bytes, shards: tuple, dicts: tuple) -> str | None:
        """The name of query ``data`` (a child of ``parent``: the key matched) if this entry's
        answer is its answer; None when the full path must judge it."""
        ln = data[12]
        if ln > self.room or data[2:12] != self.qhdr:
            return None
        label = data[13:13 + ln]
        if 46 in label:                      # "a.b" as one label: its suffixes differ
            return None
        name = label.lower().decode("latin-1") + self.dotparent
        return None if not self.clean and named(name, shards, dicts) else name

    def reply(self, data: bytes) -> bytes:
        """The answer: ID, the cached header, the client's first label, the cached rest."""
        return b"".join((data[:2], self.hdr, data[12:13 + data[12]], self.rest))

    def count(self, host: str, lab: bytes) -> bool:
        """Count one answer to ``host`` whose first label (length octet first) was ``lab``;
        True if the entry was clean (it must join the dirty list). (The inlined copy in
        Engine._zone_answerer does the same.)"""
        self.n += 1
        if self.host is None:
            self.host, self.labels = host, [lab]
            return True
        if self.host == host:
            s = self.labels
        else:
            o = self.others
            if o is None:
                o = self.others = {}
            h = o.get(host)
            if h is None:
                o[host] = [1, [lab]]
                return False
            h[0] += 1
            s = h[1]
        if len(s) < SAMPLES and lab not in s:
            s.append(lab)
        return False

    def names(self, labels: list) -> list[str]:
        """Sampled first labels as names (lower case, each once)."""
        dp = self.dotparent
        return list(dict.fromkeys(lab[1:].lower().decode("latin-1") + dp for lab in labels))

    def take(self) -> list[tuple]:
        """``(client, count, names)`` since the last take, ``names`` a callable returning the
        sampled names (decoded only if the detection log keeps them); the entry is clean again."""
        out = []
        others = self.others
        if self.host is not None:
            n = self.n
            if others:
                for host, (k, labels) in others.items():
                    out.append((host, k, partial(self.names, labels)))
                    n -= k
            out.append((self.host, n, partial(self.names, self.labels)))
        self.n, self.host, self.labels, self.others = 0, None, None, None
        return out
