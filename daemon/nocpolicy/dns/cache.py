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

Value: a tuple ``(wire, renew, ttl0, cname, everyone)``:

* ``wire`` -- the answer minus its ID, question lower-cased, EDNS options
  stripped (a cookie belongs to one client), TTLs as of grid second ``s``;
* ``renew`` -- ``epoch + s + 1``: until then ``wire`` is exact and is sent as
  it is (the hot path compares its batch timestamp with it); after it the
  TTLs are rewritten (once per second per entry at most). ``renew`` float
  objects are shared by every entry of the same second (memory);
* ``ttl0`` -- the TTL the entry was stored with (prefetch at its last 10 %);
* ``cname`` -- None, or :class:`CnameInfo` (CNAME targets, verdicts per
  subscriber of one engine generation);
* ``everyone`` -- the engine generation in which the question name was found
  on no list at all (so it is allowed for every client), or -1. The hot path
  answers only entries whose ``everyone`` is the current generation.

Tuples of bytes/floats/ints are untracked by the garbage collector: a million
entries cost a collection nothing.

Eviction is CLOCK (second chance) at no cost on a hit: keys wait in a queue in
insertion order, with a marker (the ``renew`` float of that second) whenever
the second changes. The key at the head is evicted unless its entry was
re-rendered -- that is, hit -- after the second it was queued in; then it goes
to the tail once more. Numbers behind the choice: bench/cache_eviction_sim.py,
docs/dns.md.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import deque

from ..policy.dnsconf import CacheSettings as CacheConfig
from .upstream import Pending
from .wire import SERVFAIL, TYPE_OPT, WireError, read_name

ENTRY_OVERHEAD = 200      # bytes per entry beyond key and wire: dict slot, tuple, FIFO slot (measured)
STALE_TTL = 30            # RFC 8767: TTL of a stale answer
EDE_STALE = 3             # RFC 8914: Stale Answer
TYPE_SOA = 6
_MAX_TTL = 0x7FFFFFFF
_PACK_TTL = struct.Struct("!I").pack_into


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


def key_name(key: bytes) -> str:
    return read_name(key, 10)[0]


def _udp_limit(key: bytes) -> int:
    """The UDP size the querier of ``key`` accepts (512 without EDNS)."""
    if key[8:10] == b"\0\1" and len(key) >= 11:
        return max(512, int.from_bytes(key[-8:-6]))
    return 512


class AnswerCache:
    def __init__(self, conf: CacheConfig, clock=time.perf_counter):
        self.conf = conf
        self.clock = clock
        self.d: dict[bytes, tuple] = {}
        self.fifo: deque = deque()       # keys in queue order, and float markers (see _bound)
        self._head_mark = 0.0             # the marker last passed at the head
        self._tail_mark = 0.0             # the marker last queued at the tail
        self.bytes = 0
        self.epoch = clock()
        self.prefetching: set[bytes] = set()
        self.hits = self.misses = self.evictions = self.stale = self.prefetches = self.inserts = 0
        self._renew: dict[int, float] = {}
        self._ints: dict[int, int] = {}

    # -- time -----------------------------------------------------------------------

    def second(self, t: float) -> int:
        return int(t - self.epoch)

    def renew_at(self, s: int) -> float:
        """``epoch + s + 1`` as one float object shared by every entry of grid second ``s``."""
        f = self._renew.get(s)
        if f is None:
            if len(self._renew) > 4096:
                self._renew = {}
            f = self._renew[s] = self.epoch + s + 1
        return f

    def _int(self, n: int) -> int:
        if len(self._ints) > 65536:
            self._ints = {}
        return self._ints.setdefault(n, n)

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

    def store(self, key: bytes, resp: bytes, qend: int, t: float, cnames: tuple[str, ...] = (),
              everyone: int = -1) -> bool:
        """Keep the upstream's answer ``resp`` (with its ID) to the query of ``key``."""
        if len(resp) < 12 or resp[2] & 0x02 or len(resp) > _udp_limit(key) or not self.conf.enabled:
            return False                                 # truncated, or too large for its key
        w = resp[2:12] + key[10:qend - 6] + resp[qend - 4:]     # the question lower-cased
        try:
            sh = scan(w)
            if sh.opt >= 0 and sh.opt_end != len(w):
                return False                             # OPT not last (TSIG...): leave it
            if sh.opt >= 0 and sh.opt_end > sh.opt + 11:
                w = w[:sh.opt + 9] + b"\0\0"           # options (cookie, EDE...) were for one client
            ttl = self.ttl_for(w, sh)
        except (WireError, IndexError):
            return False
        if ttl < 1:
            return False
        old = self.d.get(key)
        if w[1] & 0xF == SERVFAIL and old is not None:
            return False                                 # keep the good (maybe stale) answer
        s = self.second(t)
        ttl = int(ttl)
        if ttl != sh.min_ttl:
            w = with_ttls(w, sh.ttl_offsets, lambda x, ttl=ttl: min(x, ttl))
        cname = CnameInfo(cnames) if cnames else None
        if everyone < 0 and old is not None:
            everyone = old[4]                            # a refresh: the name is still the name
        self.d[key] = (w, self.renew_at(s), self._int(ttl), cname, everyone)
        self.inserts += 1
        if old is None:
            self._queue(key, s)
            self.bytes += len(key) + len(w) + ENTRY_OVERHEAD
            self._bound(s)
        else:
            self.bytes += len(w) - len(old[0])
        return True

    def _queue(self, key: bytes, s: int) -> None:
        mark = self.renew_at(s)
        if mark != self._tail_mark:
            self.fifo.append(mark)
            self._tail_mark = mark
        self.fifo.append(key)

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
            if v[1] > self._head_mark and chances < 64:   # hit since it was queued: once more
                chances += 1
                self._queue(k, s)
                continue
            del d[k]
            self.bytes -= len(k) + len(v[0]) + ENTRY_OVERHEAD
            self.evictions += 1
        if len(fifo) > 2 * len(d) + 1024:                # keys dropped by flush: compact
            self.fifo = deque(k for k in fifo if k.__class__ is float or k in d)

    # -- looking up ----------------------------------------------------------------

    def lookup(self, key: bytes, t: float):
        """``(wire, cname, fresh, prefetch)`` for ``key`` at time ``t``, or None.

        ``fresh`` False: expired but within the stale age (forward, keep it for serve-stale).
        ``prefetch`` True: fresh, in its last 10 % of TTL and not being refreshed yet."""
        v = self.d.get(key)
        if v is None:
            return None
        if t < v[1]:
            return v[0], v[3], True, False
        r = self.aged(key, v, t)
        if r is None:
            return None
        return r[0], v[3], r[1], r[2]

    def aged(self, key: bytes, v: tuple, t: float):
        """Entry ``v`` of ``key`` brought to time ``t`` (its TTLs rewritten, stored back):
        ``(wire, fresh, prefetch)``, or None when it is gone (past the stale age, or junk)."""
        w, renew, ttl0, cname, everyone = v
        s = int(t - self.epoch)
        delta = s - (int(round(renew - self.epoch)) - 1)
        qe = len(key) - (11 if key[8:10] == b"\0\1" else 0)
        off = single_ttl(w, qe)
        if off >= 0:                                   # one RR (the common case): no scan
            left = int.from_bytes(w[off:off + 4]) - delta
            if left > 0:
                w = w[:off] + left.to_bytes(4) + w[off + 4:]
        else:
            try:
                sh = scan(w)
            except (WireError, IndexError):
                self._drop(key)
                return None
            left = sh.min_ttl - delta
            if left > 0:
                w = with_ttls(w, sh.ttl_offsets, lambda x: x - delta if x > delta else 0)
        if left <= 0:
            if -left > self.conf.serve_stale:
                self._drop(key)
                return None
            return w, False, False
        self.d[key] = (w, self.renew_at(s), ttl0, cname, everyone)
        pf = (self.conf.prefetch and left * 10 <= ttl0 and key not in self.prefetching
              and len(self.prefetching) < 1000)
        if pf:
            self.prefetching.add(key)
        return w, True, pf

    def stale_answer(self, key: bytes, t: float) -> bytes | None:
        """RFC 8767: the entry of ``key`` if it expired less than ``serve_stale`` ago (or is
        still fresh), every TTL 30, EDE 3 added when the querier speaks EDNS; minus the ID."""
        v = self.d.get(key)
        if v is None or not self.conf.serve_stale:
            return None
        w, renew = v[0], v[1]
        if w[1] & 0xF == SERVFAIL:
            return None
        try:
            sh = scan(w)
        except (WireError, IndexError):
            return None
        expired_for = self.second(t) - (int(round(renew - self.epoch)) - 1) - sh.min_ttl
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
        v = self.d.get(key)
        if v is not None and v[4] != everyone:
            self.d[key] = (*v[:4], everyone)

    def _drop(self, key: bytes) -> None:
        v = self.d.pop(key, None)
        if v is not None:
            self.bytes -= len(key) + len(v[0]) + ENTRY_OVERHEAD

    # -- commands ------------------------------------------------------------------

    def flush(self, name: str | None = None, keys=None) -> int:
        """Forget every entry (``name`` None) or those of ``name`` and the names below it
        (among ``keys``, from :func:`candidates`, when given)."""
        if name is None:
            n = len(self.d)
            self.d, self.fifo, self.bytes = {}, deque(), 0
            self._head_mark = self._tail_mark = 0.0
            self.prefetching = set()
            return n
        name = name.lower().rstrip(".")
        dot = "." + name
        wire = name_wire(name)
        gone = [k for k in (self.d if keys is None else keys)
                if wire in k and ((x := _safe_name(k)) == name or x.endswith(dot))]
        for k in gone:
            self._drop(k)
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


async def candidates(cache: AnswerCache, name: str, chunk: int = 50_000) -> list[bytes]:
    """Keys that may belong to ``name`` or a name below it, found a slice at a time (a million
    keys at once would hold the event loop for a noticeable time)."""
    wire = name_wire(name.lower().rstrip("."))
    keys = list(cache.d)
    out: list[bytes] = []
    for i in range(0, len(keys), chunk):
        out += [k for k in keys[i:i + chunk] if wire in k]
        await asyncio.sleep(0)
    return out


def cache_entries(cache: AnswerCache, name: str, keys, limit: int = 100) -> list[dict]:
    """What the cache holds for ``name`` exactly (``cache.show NAME``), among ``keys``."""
    wire = name_wire(name)
    now = cache.clock()
    out = []
    for k in keys:
        v = cache.d.get(k)
        if v is None or not k.startswith(wire, 10):
            continue
        w, renew, ttl0, cname = v[:4]
        qend = 12 + len(wire) + 4
        opt = k[8:10] == b"\0\1"
        try:
            left = scan(w).min_ttl - (cache.second(now) - (int(round(renew - cache.epoch)) - 1))
        except (WireError, IndexError):
            continue
        out.append({"type": int.from_bytes(k[qend - 6:qend - 4]), "class": int.from_bytes(k[qend - 4:qend - 2]),
                    "rd": bool(k[0] & 1), "cd": bool(k[1] & 0x10), "ad": bool(k[1] & 0x20), "edns": opt,
                    "do": bool(opt and k[-4] & 0x80), "udp_size": _udp_limit(k) if opt else None,
                    "rcode": RCODES.get(w[1] & 0xF, str(w[1] & 0xF)), "answers": int.from_bytes(w[4:6]),
                    "ttl": ttl0, "ttl_left": max(left, 0), "stale_for": max(-left, 0), "bytes": len(w),
                    "cnames": list(cname.targets) if cname else []})
        if len(out) >= limit:
            break
    return out


def _safe_name(key: bytes) -> str:
    try:
        return key_name(key)
    except (WireError, IndexError):
        return ""
