"""The answer cache: upstream answers, shared by every client, TTLs counting down.

Pure data and bytes (no sockets, no verdicts): the engine asks it for an
answer before forwarding and hands it what the upstream said. Blocking is
never cached here -- the engine judges every query before it looks here, and
the CNAME verdicts of an entry are kept per subscriber *with* the entry and
dropped whenever the engine's generation changes (list, policy, consent).

Key: the query minus its ID with the question name lower-cased and the EDNS
options left out -- so the header flags (RD, AD, CD), the type and class, the
presence of EDNS, its buffer size and the DO bit all separate entries. A
query from a lower-case client without EDNS options *is* its key (``data[2:]``):
the engine's hot path looks that up directly, with no parsing.

Storage (memory: a million entries must fit in 300 MB, docs/dns.md): the dict
maps ``hash(key) >> 4`` (a 60-bit int, 32 bytes) to ONE bytes value per entry,
no Python object per field -- a fixed prefix of ``P`` bytes, then the wire:

* ``s`` (4) -- the grid second the TTLs of the wire are exact for (``epoch + s``
  to ``epoch + s + 1``); after it the TTLs are rewritten, once a second per
  entry at most;
* ``gen`` (4) -- the engine generation in which the question name was found on
  no list at all (allowed for every client), 0xFFFFFFFF for none;
* ``cname`` (1) -- 1 when the answer has CNAME targets (:class:`CnameInfo`, in
  the side table ``cnames``: verdicts per subscriber of one generation);
* ``nl`` (1) -- the length of the question's name (<= 255);
* ``flags`` (1) -- 1: the query had OPT; 2: the answer is one RR (maybe and an OPT) whose
  TTL sits right after the question (``Q + 10 + nl``): its re-rendering is one patch;
* ``ttl0`` (4) -- the TTL the entry was stored with (prefetch at its last 10 %);
* the query's flags (2) and its OPT class and TTL (6: UDP size, DO): with the
  question in the wire they give back the whole key (:func:`key_of`), which
  every slow-path lookup compares with the key asked for;
* ``exp`` (4) -- for a one-RR answer, the grid second its TTL reaches 0;
* ``wire`` -- the answer minus its ID, question lower-cased, EDNS options
  stripped (a cookie belongs to one client), TTLs as of second ``s``.

The hot path (``Engine._cache_hitter``) looks the query's key bytes up in
``hot``: the wires of the entries already served in this second and this
generation, allowed for every client, without CNAME (cleared when the second
or the generation changes, or on a flush; at most ``HOT_MAX``). The first hit
of an entry in a second (``CachePath.warm_wire``) finds it by hash, tests its
first 9 bytes against one ``stamp`` (this second, this generation, no CNAME)
or re-renders its TTLs, compares the stored question with the query's -- a
60-bit SipHash (keyed per process) separates the rest of the key (flags, EDNS
size, DO) -- and puts the wire in ``hot``.

Bytes objects are untracked by the garbage collector: a million entries cost a
collection nothing.

Eviction is CLOCK (second chance) at no cost on a hit: keys wait in a queue in
insertion order, with a float marker whenever the second changes. The key at
the head is evicted unless its entry was re-rendered -- that is, hit -- after
the second it was queued in; then it goes to the tail once more. Numbers
behind the choice: bench/cache_eviction_sim.py, docs/dns.md.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque

from ..policy.dnsconf import CacheSettings as CacheConfig
from .upstream import Pending
from .wire import SERVFAIL, TYPE_OPT, WireError, read_name

ENTRY_OVERHEAD = 130      # bytes per entry beyond the value's data: dict slot, int key, bytes header, queue slot
STALE_TTL = 30            # RFC 8767: TTL of a stale answer
EDE_STALE = 3             # RFC 8914: Stale Answer
TYPE_SOA = 6
_MAX_TTL = 0x7FFFFFFF
_PACK_TTL = struct.Struct("!I").pack_into
# s, gen, cname, nl, flags, ttl0, query flags, OPT class+TTL, exp. dns/_fastudp.c (warm) reads
# s, gen+cname, nl, flags, ttl0 and exp at their offsets here (0, 4, 9, 10, 11, 23): change both
_META = struct.Struct("!IIBBBI2s6sI")
P = _META.size                           # 27: the wire starts here
Q = P + 10                               # the question starts here
NO_GEN = 0xFFFFFFFF
_STAMP = struct.Struct("!IIB")           # s, gen, cname=0: the hot path's test of the first 9 bytes
_NO_OPT = bytes(6)
_HEAD = struct.Struct("!I7xI8xI").unpack_from    # s, ttl0, exp of an entry
HOT_MAX = 65536           # entries of the hot table (one second's distinct hits)


def hkey(key: bytes) -> int:
    """The dict key of cache key ``key`` (Python caches a bytes object's hash: free on a hit)."""
    return hash(key) >> 4


def entry_s(v: bytes) -> int:
    return (v[0] << 24) | (v[1] << 16) | (v[2] << 8) | v[3]


def entry_gen(v: bytes) -> int:
    g = int.from_bytes(v[4:8])
    return -1 if g == NO_GEN else g


def key_of(v: bytes) -> bytes:
    """The cache key of entry ``v`` (see the module's docstring)."""
    q = v[Q:Q + 4 + v[9]]
    if v[10] & 1:
        return v[15:17] + b"\0\1\0\0\0\0\0\1" + q + b"\0\0\x29" + v[17:23] + b"\0\0"
    return v[15:17] + b"\0\1\0\0\0\0\0\0" + q


def _meta(key: bytes, s: int, gen: int, cname: bool, ttl0: int, w: bytes) -> bytes:
    """The prefix of the entry of ``key`` whose wire is ``w`` (the module's docstring)."""
    edns = key[8:10] == b"\0\1"
    nl = len(key) - (25 if edns else 14)
    off = single_ttl(w, 14 + nl)
    exp = s + int.from_bytes(w[off:off + 4]) if off >= 0 else 0
    return _META.pack(s, NO_GEN if gen < 0 else gen, cname, nl, edns | (2 if off >= 0 else 0), ttl0, key[:2],
                      key[-8:-2] if edns else _NO_OPT, exp)


class Fetch(Pending):
    """A forwarded query whose answer goes into the cache (``key``). ``done``: the client has
    been answered already (stale answer, or a prefetch with no client)."""

    __slots__ = ("key", "done", "timer", "everyone")

    def __init__(self, data, q, host, addr, sub, send, tcp, t0, key: bytes, everyone: int = -1):
        super().__init__(data, q, host, addr, sub, send, tcp, t0)
        self.key = key
        self.done = False
        self.timer = None
        self.everyone = everyone


class CnameInfo:
    """CNAME targets of a cached answer and their verdict per subscriber, for one generation."""

    __slots__ = ("targets", "gen", "verdicts")

    def __init__(self, targets: tuple[str, ...]):
        self.targets = targets
        self.gen = -1
        self.verdicts: dict = {}


class Shape:
    """What :func:`scan` finds in an answer (wire = answer minus ID)."""

    __slots__ = ("ttl_offsets", "min_ttl", "soa_ttl", "opt", "opt_end")

    def __init__(self):
        self.ttl_offsets: list[int] = []
        self.min_ttl = _MAX_TTL
        self.soa_ttl = -1           # min(SOA TTL, SOA MINIMUM) of the authority section (RFC 2308)
        self.opt = -1               # offset of the OPT RR
        self.opt_end = -1


def skip_name(w: bytes, pos: int) -> int:
    while True:
        ln = w[pos]
        if ln >= 0xC0:
            return pos + 2
        if ln > 63:
            raise WireError("bad label")
        pos += 1 + ln
        if not ln:
            return pos


def scan(w: bytes) -> Shape:
    """Every RR's TTL offset and the TTL figures of an answer; WireError/IndexError on junk."""
    an, ns, ar = (w[4] << 8) | w[5], (w[6] << 8) | w[7], (w[8] << 8) | w[9]
    if (w[2] << 8) | w[3] != 1:
        raise WireError("not one question")
    pos = skip_name(w, 10) + 4
    sh = Shape()
    for i in range(an + ns + ar):
        start = pos
        pos = skip_name(w, pos)
        rtype = (w[pos] << 8) | w[pos + 1]
        rdlen = (w[pos + 8] << 8) | w[pos + 9]
        end = pos + 10 + rdlen
        if end > len(w):
            raise WireError("RR runs past the end")
        if rtype == TYPE_OPT:
            sh.opt, sh.opt_end = start, end
        else:
            ttl = int.from_bytes(w[pos + 4:pos + 8])
            if ttl > _MAX_TTL:          # RFC 2181 8: the top bit set means 0
                ttl = 0
            sh.ttl_offsets.append(pos + 4)
            if ttl < sh.min_ttl:
                sh.min_ttl = ttl
            if rtype == TYPE_SOA and an <= i < an + ns and rdlen >= 20:
                minimum = int.from_bytes(w[end - 4:end])
                sh.soa_ttl = min(ttl, minimum) if sh.soa_ttl < 0 else min(sh.soa_ttl, ttl, minimum)
        pos = end
    if pos != len(w):
        raise WireError("trailing bytes")
    return sh


def single_ttl(w: bytes, qe: int) -> int:
    """The TTL offset when the answer is one RR with a compressed owner name after the question
    (ending at ``qe``), maybe followed by an OPT; -1 otherwise."""
    if w[4:8] != b"\0\1\0\0" or len(w) < qe + 12 or w[qe] < 0xC0:
        return -1
    end = qe + 12 + ((w[qe + 10] << 8) | w[qe + 11])
    ar = w[8:10]
    if ar == b"\0\0" and end == len(w):
        return qe + 6
    if ar == b"\0\1" and w[end:end + 3] == b"\0\0\x29" and end + 11 <= len(w):
        return qe + 6
    return -1


def with_ttls(w: bytes, offsets: list[int], fn) -> bytes:
    """``w`` with every TTL at ``offsets`` replaced by ``fn(old)``."""
    b = bytearray(w)
    for off in offsets:
        _PACK_TTL(b, off, fn(int.from_bytes(b[off:off + 4])))
    return bytes(b)


def cache_key(data: bytes, qend: int) -> bytes | None:
    """The key of a parsed query (question ends at ``qend``), None when it must not be cached:
    answer/authority records in the query, other additional records than one OPT, or an EDNS
    Client Subnet option (the answer may depend on the client's network)."""
    if data[6:10] != b"\0\0\0\0":
        return None
    head = data[2:12]
    name = data[12:qend - 4].lower()
    qtail = data[qend - 4:qend]
    n = len(data)
    if n == qend and head[8:10] == b"\0\0":
        return head + name + qtail
    if head[8:10] != b"\0\1" or n < qend + 11 or data[qend:qend + 3] != b"\0\0\x29":
        return None
    rdlen = (data[qend + 9] << 8) | data[qend + 10]
    if qend + 11 + rdlen != n:
        return None
    pos = qend + 11
    while pos + 4 <= n:                       # options: refuse ECS, skip the rest (cookies, padding)
        code, ln = (data[pos] << 8) | data[pos + 1], (data[pos + 2] << 8) | data[pos + 3]
        if code == 8:
            return None
        pos += 4 + ln
    return head + name + qtail + data[qend:qend + 9] + b"\0\0"


def restore(data: bytes, qend: int, wire: bytes) -> bytes:
    """The cached ``wire`` as the answer to ``data``: its ID and the letter case of its question."""
    return data[:2] + wire[:10] + data[12:qend] + wire[qend - 2:]


def _udp_limit(key: bytes) -> int:
    """The UDP size the querier of ``key`` accepts (512 without EDNS)."""
    if key[8:10] == b"\0\1" and len(key) >= 11:
        return max(512, int.from_bytes(key[-8:-6]))
    return 512


class AnswerCache:
    def __init__(self, conf: CacheConfig, clock=time.perf_counter):
        self.conf = conf
        self.clock = clock
        self.d: dict[int, bytes] = {}    # hkey(key) -> prefix + wire (the module's docstring)
        self.cnames: dict[int, CnameInfo] = {}   # hkey -> CNAME targets and verdicts, for entries with them
        self.fifo: deque = deque()       # hkeys in queue order, and float markers (see _bound)
        self._head_mark = -1.0            # the marker last passed at the head
        self._tail_mark = -1.0            # the marker last queued at the tail
        self.bytes = 0
        self.epoch = clock()
        self.prefetching: set[bytes] = set()
        self.hits = self.misses = self.evictions = self.stale = self.prefetches = self.inserts = 0
        self.stamp = b""                  # the hot path's prefix: this second, generation sgen, no CNAME
        self.s = 0                        # the stamp's second
        self.s4 = self.gen_cname = b""      # the stamp's first 4 bytes (second), the other 5
        self.until = 0.0                  # stamp holds until then
        self.sgen = -1
        self.hot: dict[bytes, bytes] = {}   # key -> wire, served in this second and generation

    # -- time -----------------------------------------------------------------------

    def second(self, t: float) -> int:
        return max(0, int(t - self.epoch))

    def restamp(self, t: float, gen: int) -> bytes:
        """The first 9 bytes of an entry the hot path may send as it is at time ``t``."""
        s = self.second(t)
        self.stamp = _STAMP.pack(s, gen, 0)
        self.until, self.sgen, self.s = self.epoch + s + 1, gen, s
        self.s4, self.gen_cname = self.stamp[:4], self.stamp[4:]
        self.hot = {}
        return self.stamp

    def keep_hot(self, key: bytes, w: bytes) -> None:
        hot = self.hot
        if len(hot) < HOT_MAX:
            hot[key] = w

    def rerender(self, hk: int, v: bytes) -> bytes | None:
        """The hot path's one-RR entry ``v`` of an earlier second (``flags`` 2) brought to the
        stamp's second with one patch of its TTL and stored back: its new wire; None when it
        expired, is due for a prefetch or is not older than the stamp (the general path decides)."""
        es, ttl0, exp = _HEAD(v)
        left = exp - self.s
        if left * 10 <= ttl0 or es >= self.s:
            return None
        pos = Q + 10 + v[9]
        v = self.d[hk] = self.s4 + v[4:pos] + left.to_bytes(4) + v[pos + 4:]
        return v[P:]

    # -- storing --------------------------------------------------------------------

    def ttl_for(self, w: bytes, sh: Shape) -> float:
        """How long an answer may be cached (0: not at all). RFC 1035/2308, unbound's caps."""
        c = self.conf
        rcode = w[1] & 0xF
        an = (w[4] << 8) | w[5]
        if rcode == SERVFAIL:
            return c.servfail_ttl
        if rcode == 3 or (rcode == 0 and not an):        # NXDOMAIN, NODATA: the SOA decides
            if sh.soa_ttl < 0:
                return 0                                 # RFC 2308 5: no SOA, no caching
            return max(c.min_ttl, min(sh.soa_ttl, c.negative_max_ttl))
        if rcode != 0 or sh.min_ttl == _MAX_TTL:
            return 0
        return max(c.min_ttl, min(sh.min_ttl, c.max_ttl))

    def _shape(self, key: bytes, resp: bytes, qend: int):
        """``(wire, ttl, shape)`` of the upstream's answer ``resp`` to ``key``, or None when it is
        not to be cached (truncated, too large for its key, OPT not last, junk, TTL 0)."""
        if len(resp) < 12 or resp[2] & 0x02 or len(resp) > _udp_limit(key) or not self.conf.enabled:
            return None
        w = resp[2:12] + key[10:qend - 6] + resp[qend - 4:]     # the question lower-cased
        try:
            sh = scan(w)
            if sh.opt >= 0 and sh.opt_end != len(w):
                return None                              # OPT not last (TSIG...): leave it
            if sh.opt >= 0 and sh.opt_end > sh.opt + 11:
                w = w[:sh.opt + 9] + b"\0\0"           # options (cookie, EDE...) were for one client
            ttl = self.ttl_for(w, sh)
        except (WireError, IndexError):
            return None
        return (w, int(ttl), sh) if ttl >= 1 else None

    def store(self, key: bytes, resp: bytes, qend: int, t: float, cnames: tuple[str, ...] = (),
              everyone: int = -1) -> bool:
        """Keep the upstream's answer ``resp`` (with its ID) to the query of ``key``."""
        r = self._shape(key, resp, qend)
        if r is None:
            return False
        w, ttl, sh = r
        hk = hkey(key)
        prev = self.d.get(hk)                            # maybe another key's (same hash): replaced
        old = prev if prev is not None and key_of(prev) == key else None
        if w[1] & 0xF == SERVFAIL and old is not None:
            return False                                 # keep the good (maybe stale) answer
        s = self.second(t)
        if ttl != sh.min_ttl:
            w = with_ttls(w, sh.ttl_offsets, lambda x, ttl=ttl: min(x, ttl))
        if everyone < 0 and old is not None:
            everyone = entry_gen(old)                    # a refresh: the name is still the name
        if cnames:
            self.cnames[hk] = CnameInfo(cnames)
        else:
            self.cnames.pop(hk, None)
        v = self.d[hk] = _meta(key, s, everyone, bool(cnames), ttl, w) + w
        self.inserts += 1
        if prev is None:
            self.bytes += len(v) + ENTRY_OVERHEAD
            self._queue(hk, s)
            self._bound(s)
        else:
            self.bytes += len(v) - len(prev)
        return True

    def _queue(self, hk: int, s: int) -> None:
        mark = float(s)
        if mark != self._tail_mark:
            self.fifo.append(mark)
            self._tail_mark = mark
        self.fifo.append(hk)

    def _bound(self, s: int | None = None) -> None:
        """Evict until within max_entries and max_bytes: CLOCK, see the module's docstring."""
        c, d, fifo = self.conf, self.d, self.fifo
        if s is None:
            s = self.second(self.clock())
        chances = 0
        while fifo and (len(d) > c.max_entries or self.bytes > c.max_bytes):
            k = fifo.popleft()
            if k.__class__ is float:
                self._head_mark = k
                continue
            v = d.get(k)
            if v is None:
                continue
            if entry_s(v) > self._head_mark and chances < 64:   # hit since it was queued: once more
                chances += 1
                self._queue(k, s)
                continue
            self._drop_hk(k)
            self.evictions += 1
        if len(fifo) > 2 * len(d) + 1024:                # keys dropped by flush: compact
            self.fifo = deque(k for k in fifo if k.__class__ is float or k in d)

    # -- looking up ----------------------------------------------------------------

    def entry(self, key: bytes) -> tuple[int, bytes] | None:
        """``(hkey, value)`` of ``key``, or None (not cached; another key with its hash)."""
        hk = hkey(key)
        v = self.d.get(hk)
        if v is None or key_of(v) != key:
            return None
        return hk, v

    def cname_of(self, key: bytes) -> CnameInfo | None:
        return self.cnames.get(hkey(key))

    def lookup(self, key: bytes, t: float):
        """``(wire, cname, fresh, prefetch)`` for ``key`` at time ``t``, or None.

        ``fresh`` False: expired but within the stale age (forward, keep it for serve-stale).
        ``prefetch`` True: fresh, in its last 10 % of TTL and not being refreshed yet."""
        e = self.entry(key)
        if e is None:
            return None
        hk, v = e
        cname = self.cnames.get(hk) if v[8] else None
        if entry_s(v) >= self.second(t):
            return v[P:], cname, True, False
        r = self.aged(key, hk, v, t)
        if r is None:
            return None
        return r[0], cname, r[1], r[2]

    def aged(self, key: bytes, hk: int, v: bytes, t: float):
        """Entry ``v`` of ``key`` brought to time ``t`` (its TTLs rewritten, stored back):
        ``(wire, fresh, prefetch)``, or None when it is gone (past the stale age, or junk)."""
        w = v[P:]
        s = self.second(t)
        delta = s - entry_s(v)
        if delta <= 0:
            return w, True, False
        off = single_ttl(w, Q - P + 4 + v[9])
        if off >= 0:                                   # one RR (the common case): no scan
            left = int.from_bytes(w[off:off + 4]) - delta
            if left > 0:
                w = w[:off] + left.to_bytes(4) + w[off + 4:]
        else:
            try:
                sh = scan(w)
            except (WireError, IndexError):
                self._drop_hk(hk)
                return None
            left = sh.min_ttl - delta
            if left > 0:
                w = with_ttls(w, sh.ttl_offsets, lambda x: x - delta if x > delta else 0)
        if left <= 0:
            if -left > self.conf.serve_stale:
                self._drop_hk(hk)
                return None
            return w, False, False
        self.d[hk] = s.to_bytes(4) + v[4:P] + w
        ttl0 = int.from_bytes(v[11:15])
        pf = (self.conf.prefetch and left * 10 <= ttl0 and key not in self.prefetching
              and len(self.prefetching) < 1000)
        if pf:
            self.prefetching.add(key)
        return w, True, pf

    def stale_answer(self, key: bytes, t: float) -> bytes | None:
        """RFC 8767: the entry of ``key`` if it expired less than ``serve_stale`` ago (or is
        still fresh), every TTL 30, EDE 3 added when the querier speaks EDNS; minus the ID."""
        e = self.entry(key)
        if e is None or not self.conf.serve_stale:
            return None
        v = e[1]
        w = v[P:]
        if w[1] & 0xF == SERVFAIL:
            return None
        try:
            sh = scan(w)
        except (WireError, IndexError):
            return None
        expired_for = self.second(t) - entry_s(v) - sh.min_ttl
        if expired_for > self.conf.serve_stale:
            return None
        w = with_ttls(w, sh.ttl_offsets, lambda x: STALE_TTL)
        if sh.opt >= 0:
            text = b"stale answer (upstream unreachable)"
            opt = struct.pack("!HHH", 15, 2 + len(text), EDE_STALE) + text
            w = w[:sh.opt + 9] + len(opt).to_bytes(2) + opt
        return w

    def mark(self, key: bytes, everyone: int) -> None:
        """Note that the name of ``key`` is on no list in engine generation ``everyone``."""
        e = self.entry(key)
        if e is not None and entry_gen(e[1]) != everyone:
            hk, v = e
            self.d[hk] = v[:4] + (NO_GEN if everyone < 0 else everyone).to_bytes(4) + v[8:]

    def _drop_hk(self, hk: int) -> None:
        v = self.d.pop(hk, None)
        if v is not None:
            self.bytes -= len(v) + ENTRY_OVERHEAD
            if v[8]:
                self.cnames.pop(hk, None)

    # -- commands ------------------------------------------------------------------

    def flush(self, name: str | None = None, keys=None) -> int:
        """Forget every entry (``name`` None) or those of ``name`` and the names below it
        (among ``keys``, hkeys from :func:`candidates`, when given)."""
        if name is None:
            n = len(self.d)
            self.d, self.cnames, self.fifo, self.bytes, self.hot = {}, {}, deque(), 0, {}
            self._head_mark = self._tail_mark = -1.0
            self.prefetching = set()
            return n
        name = name.lower().rstrip(".")
        dot = "." + name
        wire = name_wire(name)
        d = self.d
        gone = [k for k in (d if keys is None else keys)
                if wire in d.get(k, b"") and ((x := entry_name(d[k])) == name or x.endswith(dot))]
        for k in gone:
            self._drop_hk(k)
        self.hot = {}
        self._bound()
        return len(gone)

    def counters(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions,
                "stale_answers": self.stale, "prefetches": self.prefetches, "inserts": self.inserts,
                "entries": len(self.d), "bytes": self.bytes}


def name_wire(name: str) -> bytes:
    """``example.com`` -> ``\\x07example\\x03com\\x00`` (lower-case)."""
    out = b"".join(bytes((len(p),)) + p.encode("latin-1") for p in name.lower().split(".") if p)
    return out + b"\0"


RCODES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN"}


async def candidates(cache: AnswerCache, name: str, chunk: int = 50_000) -> list[int]:
    """Hkeys of entries that may belong to ``name`` or a name below it, found a slice at a time
    (a million entries at once would hold the event loop for a noticeable time)."""
    wire = name_wire(name.lower().rstrip("."))
    items = list(cache.d.items())
    out: list[int] = []
    for i in range(0, len(items), chunk):
        out += [k for k, v in items[i:i + chunk] if wire in v]
        await asyncio.sleep(0)
    return out


def cache_entries(cache: AnswerCache, name: str, keys, limit: int = 100) -> list[dict]:
    """What the cache holds for ``name`` exactly (``cache.show NAME``), among hkeys ``keys``."""
    wire = name_wire(name)
    now = cache.clock()
    out = []
    for k in keys:
        v = cache.d.get(k)
        if v is None or not v.startswith(wire, Q):
            continue
        w, q, ttl0, opt = v[P:], v[Q + v[9]:Q + 4 + v[9]], int.from_bytes(v[11:15]), bool(v[10] & 1)
        cname = cache.cnames.get(k) if v[8] else None
        try:
            left = scan(w).min_ttl - (cache.second(now) - entry_s(v))
        except (WireError, IndexError):
            continue
        out.append({"type": int.from_bytes(q[:2]), "class": int.from_bytes(q[2:]),
                    "rd": bool(v[15] & 1), "cd": bool(v[16] & 0x10), "ad": bool(v[16] & 0x20), "edns": opt,
                    "do": bool(opt and v[21] & 0x80), "udp_size": max(512, int.from_bytes(v[17:19])) if opt else None,
                    "rcode": RCODES.get(w[1] & 0xF, str(w[1] & 0xF)), "answers": int.from_bytes(w[4:6]),
                    "ttl": ttl0, "ttl_left": max(left, 0), "stale_for": max(-left, 0), "bytes": len(w),
                    "cnames": list(cname.targets) if cname else []})
        if len(out) >= limit:
            break
    return out


def entry_name(v: bytes) -> str:
    """The question name of entry ``v`` ('' when it cannot be read)."""
    try:
        return read_name(v, Q)[0]
    except (WireError, IndexError):
        return ""
