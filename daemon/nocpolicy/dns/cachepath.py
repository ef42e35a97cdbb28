"""The engine's answer-cache path (mixed into :class:`~nocpolicy.dns.engine.Engine`).

The engine calls :meth:`CachePath.cached` for a query it has judged allowed
for this client; a cache hit on the hot path (a lower-case query without EDNS
options, fresh, no CNAME) never gets here: ``Engine.udp_handler`` answers it
inline. Everything else -- re-rendering TTLs once a second, mixed-case
questions, CNAME verdicts per subscriber, stale answers, prefetch, storing
what the upstream said -- happens here.
"""

from __future__ import annotations

import asyncio
import random
import time

from .cache import AnswerCache, CnameInfo, Fetch, Q, cache_key, restore
from .lists import suffixes
from .upstream import Pending
from .verdict import Verdict, judge_suffixes
from .wire import SERVFAIL, WireError, answer_cnames, may_have_cname, parse_query, truncate_for_udp

_perf = time.perf_counter
_MISS = object()
_rand16 = random.getrandbits
VERDICTS_PER_ENTRY = 256


def _fit(out: bytes, q, tcp: bool, max_udp: int) -> bytes:
    if not tcp and len(out) > 512:
        limit = min(q.edns, max_udp) or 512       # clamped like forwarded answers (dns.max_udp_size)
        if len(out) > limit:
            return truncate_for_udp(out, limit)
    return out


class CachePath:
    acache: AnswerCache | None
    gen: int
    judged: bytes

    def cached(self, data, q, host, addr, sub, send, tcp, t0) -> None:
        """Answer an allowed query from the cache, or forward it so that its answer is cached."""
        ac, pool = self.acache, self.pool
        key = cache_key(data, q.qend)
        if key is None:
            if not self.limiter.quota_full(host):
                pool.forward(Pending(data, q, host, addr, sub, send, tcp, t0))
            return
        # judged against every list by the engine just now (or seen so before): the hot path may
        # answer this entry without judging again until the next list/policy/consent change
        everyone = self.gen if self.judged is data else -1
        hit = ac.lookup(key, t0)
        if hit is not None and hit[2]:
            wire, cname, _fresh, prefetch = hit
            if prefetch:
                self._prefetch(key, t0)
            if everyone >= 0:
                ac.mark(key, everyone)
            self._serve(data, q, wire, cname, host, addr, sub, send, tcp, t0)
            return
        if self.limiter.quota_full(host):         # too many of this source's queries upstream
            return
        p = Fetch(data, q, host, addr, sub, send, tcp, t0, key, everyone)
        ac.misses += 1
        if hit is not None:          # expired: answer stale if the upstream keeps the client waiting
            p.timer = asyncio.get_running_loop().call_later(ac.conf.stale_after, self._stale_due, p)
        pool.forward(p)

    def warm_wire(self, key: bytes, t0: float) -> bytes | None:
        """The first hit of an entry in this second (not in ``hot`` yet; the stamp is this
        second's): its wire, TTLs rewritten when they are of an earlier second (and a prefetch
        started when due), kept in ``hot`` -- if the entry is ``key``'s question, allowed for
        everyone in this generation and without CNAME; else None (the slow path decides:
        stale, forward, CNAME verdicts)."""
        ac = self.acache
        hk = hash(key) >> 4                       # cache.hkey
        v = ac.d.get(hk)
        if v is None or not v.startswith(ac.gen_cname, 4) or not v.startswith(key[10:14 + v[9]], Q):
            return None
        if not v[10] & 2 or (w := ac.rerender(hk, v)) is None:     # one RR: one patch
            r = ac.aged(key, hk, v, t0)
            if r is None or not r[1]:
                return None
            if r[2]:
                self._prefetch(key, t0)
            w = r[0]
        ac.keep_hot(key, w)
        return w

    def _serve(self, data, q, wire, cname, host, addr, sub, send, tcp, t0) -> None:
        if cname is not None:
            v = self.cname_verdict(cname, sub)
            if v is not None:
                self._blocked(data, q, v, host, addr, send, t0)
                return
        out = _fit(restore(data, q.qend, wire), q, tcp, self.max_udp)
        send(out, addr)
        self.acache.hits += 1
        stats = self.stats
        stats.rcodes[out[3] & 0xF] += 1
        stats.duration["cache"].observe(_perf() - t0)

    def cname_verdict(self, cname: CnameInfo, sub) -> Verdict | None:
        """The verdict for ``sub`` of a cached answer's CNAME targets, kept with the entry until
        the engine's generation changes (any list, policy or consent change)."""
        if cname.gen != self.gen:
            cname.gen, cname.verdicts = self.gen, {}
        vs = cname.verdicts
        v = vs.get(sub, _MISS)
        if v is _MISS:
            v = None
            for target in cname.targets:
                x = judge_suffixes(sub, self.lists, suffixes(target))
                if x is not None:
                    v = Verdict(x.action, x.customer, x.list, x.cls, x.entry, x.name,
                                f"CNAME {target}: {x.reason}", x.sinkhole_a, x.sinkhole_aaaa, via_cname=True)
                    break
            if len(vs) >= VERDICTS_PER_ENTRY:
                vs.clear()
            vs[sub] = v
        return v

    def _prefetch(self, key: bytes, t0: float) -> None:
        """Ask the upstream again for a popular entry near its end (no client waits for it)."""
        ac = self.acache
        data = _rand16(16).to_bytes(2) + key
        try:
            q = parse_query(data)
            if self.pool is None:
                raise WireError("no upstream")
            p = Fetch(data, q, None, None, None, None, False, t0, key)
            p.done = True
            ac.prefetches += 1
            self.pool.forward(p)
        except Exception as exc:  # called from the hot path: never let it stop the listener
            ac.prefetching.discard(key)
            if not isinstance(exc, WireError):
                self.failed(exc)

    def fetched(self, p: Fetch, resp: bytes | None) -> bool:
        """An answer (or None) for a cache-bound query: store it; True when the client still
        needs the ordinary reply."""
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        ac = self.acache
        now = _perf()
        if ac is not None:
            ac.prefetching.discard(p.key)
            # kept only if it fits what a UDP client of this key may get (dns.max_udp_size too)
            if resp is not None and 12 <= len(resp) <= (min(p.q.edns, self.max_udp) or 512):
                cn: tuple = ()
                qend = p.qend
                if ((resp[6] or resp[7]) and resp.find(b"\x00\x05", qend) >= 0
                        and may_have_cname(resp, qend)):
                    cn = tuple(t for t in answer_cnames(resp) if t)
                ac.store(p.key, resp, qend, now, cn, p.everyone if p.everyone == self.gen else -1)
        if p.done:
            return False
        if ac is not None and (resp is None or resp[3] & 0xF == SERVFAIL):
            return not self._answer_stale(p, now)
        return True

    def _stale_due(self, p: Fetch) -> None:
        p.timer = None
        if not p.done and self.acache is not None:
            try:
                self._answer_stale(p, _perf())
            except Exception as exc:  # a timer callback must not take the loop down
                self.failed(exc)

    def _answer_stale(self, p: Fetch, now: float) -> bool:
        """RFC 8767: answer ``p`` from its expired entry (TTL 30, EDE 3). False: nothing to serve."""
        ac = self.acache
        w = ac.stale_answer(p.key, now)
        if w is None:
            return False
        p.done = True
        cname = ac.cname_of(p.key)
        if cname is not None and p.sub is not None:
            v = self.cname_verdict(cname, p.sub)
            if v is not None:
                self._blocked(p.data, p.q, v, p.host, p.addr, p.send, p.t0)
                return True
        out = _fit(restore(p.data, p.qend, w), p.q, p.tcp, self.max_udp)
        ac.stale += 1
        stats = self.stats
        stats.rcodes[out[3] & 0xF] += 1
        p.send(out, p.addr)
        stats.duration["cache"].observe(now - p.t0)
        return True
