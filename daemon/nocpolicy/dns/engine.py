"""The query path: parse, find the subscriber, judge, answer locally or forward.

Sockets live in server.py and upstream.py; this module decides and builds bytes.
Everything the hot path touches is a plain attribute swapped whole on reload
(``lists``) or when the subscribers area pushes a new view (``prefixes``, ``subs``),
so neither pauses answers.
"""

from __future__ import annotations

import logging
import socket
import time
from bisect import bisect_left

from ..policy.dnsguard import TcpLimits
from ..subscribers.model import Change, Decisions, Subscriber
from ..subscribers.prefixes import PrefixIndex
from ..subscribers.view import UNKNOWN_MODES, SubscriberView, implicit_subscriber
from . import cache
from .acl import AccessList
from .cache import Fetch
from .cachepath import CachePath
from .lists import _MASK, ListSet, suffixes
from .mmsg import NATIVE_HOOKS
from .ratelimit import RateLimiter
from .stats import BUCKETS
from .upstream import Pending
from .verdict import Verdict, judge, judge_suffixes
from .walled import WalledGarden
from .wire import (
    EDNS_SIZE,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    WireError,
    answer,
    answer_cnames,
    any_hinfo,
    error_reply,
    may_have_cname,
    parse_query,
    sinkhole_record,
    truncate_for_udp,
)
from .zones import SAMPLES, ZONE_CACHE_MAX, ZoneAnswer, named, probes, zone_key

log = logging.getLogger(__name__)

_MISS = object()
_perf = time.perf_counter
_RCODE = {"nxdomain": NXDOMAIN, "nodata": NOERROR, "refused": REFUSED, "sinkhole": NOERROR}
HOSTCACHE_MAX = 65536
__all__ = ["OUTSIDE", "UNKNOWN_MODES", "Engine"]
OUTSIDE = "\0outside"       # customer-cache value of a source the access list refuses
_OUTSIDE_SUB = Subscriber(None, security=False, refuse=True)
_NO_DECISIONS = Decisions()
IMPLICIT_KEPT = 65_536      # implicit customers' subscribers kept between two views


class _Subscribers(dict):
    """Customer id -> subscriber. An id without an entry is an implicit customer (known only
    from a live session, no runtime decision): the policy's defaults, built when first asked
    and kept for the next query while fewer than ``IMPLICIT_KEPT`` are (the map is rebuilt at
    every new view), so a million implicit customers cost no memory (sessions/, issue 15)."""

    __slots__ = ("_kept", "_lazy")

    def __init__(self, by_id):
        super().__init__(by_id)
        self._kept = 0
        self._lazy = getattr(by_id, "lazy", None)    # a CSV inventory's customers (subscribers/lazy.py)

    def __missing__(self, cid):
        sub = self._lazy(cid) if self._lazy is not None else None
        if sub is None:
            sub = implicit_subscriber(cid, _NO_DECISIONS)
        if self._kept < IMPLICIT_KEPT:
            self._kept += 1
            self[cid] = sub
        return sub


def _packed(addr: str | None) -> bytes | None:
    if not addr:
        return None
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


class LocalAnswer:
    """A cached local (blocked) answer for one customer and one query (minus its ID)."""

    __slots__ = ("resp", "rcode", "verdict", "n", "hosts")

    def __init__(self, resp: bytes, rcode: int, verdict: Verdict):
        self.resp, self.rcode, self.verdict = resp, rcode, verdict
        self.n = 0
        self.hosts: dict[str, int] = {}


ANSWER_CACHE_MAX = 100_000     # per customer; cleared when full
CACHEABLE = 512                # longer queries are answered but not cached
ALLOWED_CACHE_MAX = 100_000    # queries no list matches (shared by every client); cleared when full


def _everything(lists: ListSet) -> Subscriber:
    """A subscriber every list applies to: a name it is not blocked for is blocked for nobody."""
    return Subscriber(None, security=True, optional=frozenset(x.id for x in lists.optional))


class Engine(CachePath):
    def __init__(self, stats, detections, pool=None):
        self.stats = stats
        self._rcodes, self._forwarded = stats.rcodes, stats.duration["forwarded"]
        # the C listeners' ``flush``: they add their counts to ``stats`` every quarter second
        # and when these are called (before anything reads the counters)
        self.native_counts: list = []
        self.detections = detections
        self.pool = pool
        self.lists = ListSet()
        self.prefixes = PrefixIndex()
        self.subs: dict[str | None, Subscriber] = _Subscribers({None: UNKNOWN_MODES["protect"],
                                                                OUTSIDE: _OUTSIDE_SUB})
        self.acl = AccessList()
        self.limiter = RateLimiter(stats)
        self.limiter.customer_of = self.customer_of
        self.max_udp = EDNS_SIZE           # dns.max_udp_size: client EDNS sizes are clamped to it
        self.tcp_conf = TcpLimits()        # dns.tcp (tcp.py reads it for each new connection)
        self.hostcache: dict[str, str | None] = {}
        self.answers: dict[str | None, dict[bytes, LocalAnswer]] = {}
        # blocked answers for every child of a parent name, per customer (zones.py: DGA floods)
        self.zones: dict[str | None, dict[bytes, ZoneAnswer]] = {}
        self._probes = probes(self.lists)
        self.dirty: list[LocalAnswer] = []
        self.inspect_cnames = True
        # query bytes (minus the ID) of names no list matches -> their parsed question: such a
        # query is forwarded without parsing or judging again (still for every query)
        self.allowed: dict[bytes, object] = {}
        self.judged = b""             # with the answer cache: the last query no list matched
        self._all = _everything(self.lists)
        self._sink: dict[str, bytes | None] = {}
        self.errors = 0
        self._last_error_log = 0.0
        self.acache = None           # cache.AnswerCache of upstream answers (None: off)
        self.gen = 0                 # bumped on any list, policy or consent change (CNAME verdicts)
        self.walled = WalledGarden()            # suspension.notice_page and .allow (policy)
        self.suspended: frozenset = frozenset()  # customers under a suspension: never the fast paths

    # -- state swaps (sync, cannot fail) -------------------------------------------

    def swap(self, lists: ListSet) -> None:
        """A new policy's lists (the subscriber view comes separately, through set_view)."""
        self.drain()
        self.lists = lists
        self.answers, self.zones = {}, {}
        self.allowed = {}
        self._all = _everything(lists)
        self._probes = probes(lists)
        self._sink = {}
        self.inspect_cnames = bool(lists.all())
        self.gen += 1

    def set_view(self, view: SubscriberView, change: Change) -> None:
        """The subscribers area pushed a new view: the next query uses it."""
        self.drain()
        self.gen += 1
        self.subs = _Subscribers(view.by_id)
        self.subs[OUTSIDE] = _OUTSIDE_SUB
        self._note_suspended(view, change)
        if change.addresses:
            self.prefixes = view.prefixes
            self.forget_hosts()
        if change.customers is None:
            self.answers, self.zones = {}, {}
        else:
            answers, zones = self.answers, self.zones
            for cid in change.customers:
                answers.pop(cid, None)
                zones.pop(cid, None)

    def _note_suspended(self, view: SubscriberView, change: Change) -> None:
        if change.customers is None:
            self.suspended = frozenset(view.suspended)
            return
        now = set(self.suspended)
        for cid in change.customers:
            s = view.get(cid)
            if s is not None and s.suspension is not None:
                now.add(cid)
            else:
                now.discard(cid)
        self.suspended = frozenset(now)

    def set_lists(self, lists: ListSet) -> None:
        self.drain()
        self.lists = lists
        self.answers, self.zones = {}, {}
        self.allowed = {}
        self._all = _everything(lists)
        self._probes = probes(lists)
        self.gen += 1

    def invalidate(self) -> None:
        """Entries changed in place (list.update): forget cached answers."""
        self.drain()
        self.answers, self.zones = {}, {}
        self.allowed = {}
        self._probes = probes(self.lists)
        self.gen += 1

    def collect_native(self) -> None:
        """The counts the C listeners keep between adds, added to ``stats`` now."""
        for flush in self.native_counts:
            flush()

    def drain(self) -> None:
        """Move the counts of cached answers into the stats and the detection log."""
        self.collect_native()
        if self.pool is not None:
            self.pool.drain()
        if self.acache is not None:
            self.stats.cache = self.acache.counters()
        dirty, self.dirty = self.dirty, []
        if not dirty:
            return
        counts: dict[tuple, int] = {}
        items: list[tuple] = []
        add = items.append
        for ent in dirty:
            v = ent.verdict
            k = (v.list, v.cls, v.action)
            counts[k] = counts.get(k, 0) + ent.n
            if ent.__class__ is ZoneAnswer:
                for host, n, names in ent.take():
                    add((v, host, n, names))
                continue
            for host, n in ent.hosts.items():     # LocalAnswer: client -> count
                add((v, host, n, None))
            ent.n = 0
            ent.hosts = {}
        for (lst, cls, action), n in counts.items():
            self.stats.block(lst, cls, action, n)
        self.detections.note_batch(items)

    # -- slow-path API -------------------------------------------------------------

    def subscriber(self, host: str) -> Subscriber:
        cid = self.customer_of(host)
        return self.subs[cid]

    def customer_of(self, host: str) -> str | None:
        """The customer id of client address ``host`` (None: unknown, also outside the ACL)."""
        cid = self.hostcache.get(host, _MISS)
        if cid is _MISS:
            cid = self._lookup(host)
        return None if cid is OUTSIDE else cid

    def set_access(self, acl: AccessList) -> None:
        self.acl = acl
        self.forget_hosts()

    def forget_hosts(self) -> None:
        """Who a source is changed (sessions, access list): look every address up again."""
        self.hostcache = {}

    def judge(self, host: str, name: str) -> Verdict:
        return judge(self.subscriber(host), self.lists, name)

    def _lookup(self, host: str):
        cid = self.prefixes.lookup(host)
        if cid is None and not self.acl.allows(host):
            cid = OUTSIDE
        cache = self.hostcache
        if len(cache) >= HOSTCACHE_MAX:
            cache.clear()
        cache[host] = cid
        return cid

    # -- hot path ------------------------------------------------------------------

    def handle(self, data: bytes, host: str, addr, send, tcp: bool, t0: float) -> None:
        """Answer ``data`` (read at ``perf_counter()`` time ``t0``) from client address ``host``;
        ``send(bytes, addr)`` may be called now or later (``addr`` is whatever the transport
        needs to reach the client)."""
        cid = self.hostcache.get(host, _MISS)
        if cid is _MISS:
            cid = self._lookup(host)
        cache = self.answers.get(cid)
        if cache is not None:
            ent = cache.get(data[2:])
            if ent is not None:               # a blocked name seen before: answer from the cache
                if not tcp and self._blocked_over(host, data, addr, send):
                    return
                self._send_cached(ent, data, host, addr, send, t0)
                return
        zones = self.zones.get(cid)
        if zones is not None and self._zone(zones, data, host, addr, send, tcp, t0):
            return
        q = self._parse(data, addr, send)
        if q is None:
            return
        sub = self.subs[cid]
        if sub.refuse:
            self._refuse(data, q, addr, send, cid)
            return
        susp = sub.suspension
        if susp is not None and not self.walled.allowed(susp, suffixes(q.name)):
            self._walled(data, q, susp, addr, send, t0)
            return
        v = self._verdict(data, q, sub) if q.name else None
        if v is None:
            if q.qtype == TYPE_ANY and not tcp:
                self._any(data, q, addr, send, t0)
                return
            self._forward(data, q, host, addr, sub, send, tcp, t0)
            return
        if not tcp and self._blocked_over(host, data, addr, send):
            self._prime(cid, data, q, v)
            return
        self._answer_blocked(data, q, v, cid, host, addr, send, t0)

    def _walled(self, data: bytes, q, susp, addr, send, t0: float) -> None:
        """A suspended customer's name outside the walled garden's allow list: the notice page."""
        send(self.walled.answer(data, q, susp), addr)
        self.stats.rcodes[0] += 1
        self.stats.duration["local"].observe(time.perf_counter() - t0)

    def _send_cached(self, ent: LocalAnswer, data: bytes, host: str, addr, send, t0: float) -> None:
        send(data[:2] + ent.resp, addr)
        if not ent.n:
            self.dirty.append(ent)
        ent.n += 1
        h = ent.hosts
        h[host] = h.get(host, 0) + 1
        stats = self.stats
        stats.rcodes[ent.rcode] += 1
        d = time.perf_counter() - t0
        hist = stats.duration["local"]
        if d < 0.0001:
            hist.counts[0] += 1
            hist.total += d
        else:
            hist.observe(d)

    def _parse(self, data: bytes, addr, send):
        """The parsed query, or None once answered (FORMERR, NOTIMP) or dropped."""
        stats = self.stats
        try:
            q = parse_query(data)
        except WireError:
            stats.malformed += 1
            r = error_reply(data, FORMERR)
            if r is not None:
                stats.rcodes[FORMERR] += 1
                send(r, addr)
            return None
        if q.opcode:
            stats.rcodes[NOTIMP] += 1
            send(answer(data, q, NOTIMP), addr)
            return None
        return q

    def _verdict(self, data: bytes, q, sub: Subscriber) -> Verdict | None:
        """The blocking verdict for ``sub``, or None; remembers queries no list matches."""
        lists, sfx = self.lists, suffixes(q.name)
        v = judge_suffixes(self._all, lists, sfx)
        if v is None:                         # no list matches: allowed for every client
            if len(data) <= CACHEABLE and q.qtype != TYPE_ANY:
                if self.acache is not None:   # the answer cache marks its entry (cachepath.py)
                    self.judged = data
                    return None
                allowed = self.allowed
                if len(allowed) >= ALLOWED_CACHE_MAX:
                    allowed.clear()
                allowed[data[2:]] = q
            return None
        return judge_suffixes(sub, lists, sfx)   # some list matches: does one apply to this client?

    def _answer_blocked(self, data: bytes, q, v: Verdict, cid, host: str, addr, send, t0: float) -> None:
        """Answer a block locally and cache the answer for this customer."""
        out, rcode = self._local(data, q, v)
        send(out, addr)
        self._remember(cid, data, q, v, out, rcode, host)
        stats = self.stats
        stats.rcodes[rcode] += 1
        stats.duration["local"].observe(time.perf_counter() - t0)

    def _zone_ok(self, data: bytes, q) -> bool:
        """May the blocked answer to ``data`` serve every child of its parent (zones.py)?"""
        first = data[12]
        return (len(data) <= CACHEABLE and q.name.find(".") == first and first < 64
                and not named(q.name, *self._probes[:2]))

    def _new_zone(self, cid, data: bytes, q, v: Verdict, out: bytes, rcode: int) -> ZoneAnswer:
        zones = self.zones.get(cid)
        if zones is None:
            zones = self.zones[cid] = {}
        elif len(zones) >= ZONE_CACHE_MAX:
            zones.clear()
        first = data[12]
        z = zones[zone_key(data)] = ZoneAnswer(out, q.qend, first, q.name[first + 1:], rcode, v, self._probes,
                                               data[2:12])
        return z

    def _prime(self, cid, data: bytes, q, v: Verdict) -> None:
        """A blocked answer the blocked-answer limit dropped: still make its parent's entry (not
        counted), so that the next children of a DGA flood cost a dict look-up, not the full
        path, before that limit drops them too."""
        zones = self.zones.get(cid)
        if (zones is None or zone_key(data) not in zones) and self._zone_ok(data, q):
            self._new_zone(cid, data, q, v, *self._local(data, q, v))

    def _remember(self, cid, data, q, v: Verdict, out: bytes, rcode: int, host: str) -> None:
        """Count a blocked answer found on the full path and cache it: for its parent name when
        that answer serves every child no list names (zones.py), else for this query alone."""
        if self._zone_ok(data, q):
            ent = self._new_zone(cid, data, q, v, out, rcode)
            ent.count(host, data[12:13 + data[12]])
        else:
            ent = LocalAnswer(out[2:], rcode, v)
            if len(data) <= CACHEABLE:
                cache = self.answers.get(cid)
                if cache is None:
                    cache = self.answers[cid] = {}
                elif len(cache) >= ANSWER_CACHE_MAX:
                    cache.clear()
                cache[data[2:]] = ent
            ent.n = 1
            ent.hosts[host] = 1
        self.dirty.append(ent)

    def _zone(self, zones: dict, data: bytes, host, addr, send, tcp: bool, t0: float) -> bool:
        """A query for a child of a parent name blocked before (zones.py): answered (True)."""
        key = zone_key(data)
        z = zones.get(key) if key is not None else None
        if z is None:
            return False
        name = z.child(data, *self._probes[:2])
        if name is None:
            return False
        if not tcp and self._blocked_over(host, data, addr, send):
            return True
        send(z.reply(data), addr)
        if z.count(host, data[12:13 + data[12]]):
            self.dirty.append(z)
        stats = self.stats
        stats.rcodes[z.rcode] += 1
        d = _perf() - t0
        hist = stats.duration["local"]
        hist.counts[bisect_left(BUCKETS, d)] += 1
        hist.total += d
        return True

    def _refuse(self, data, q, addr, send, cid) -> None:
        self.stats.rcodes[REFUSED] += 1
        if cid == OUTSIDE:
            lim = self.stats.limits
            lim["acl_refused"] = lim.get("acl_refused", 0) + 1
            send(answer(data, q, REFUSED, ede=18, text="source not allowed to query"), addr)
        else:
            send(answer(data, q, REFUSED, ede=18, text="unknown client"), addr)

    def _any(self, data, q, addr, send, t0) -> None:
        """RFC 8482: an ANY query over UDP gets one synthesised HINFO record, not the whole
        RRset collection (no amplification); over TCP it is forwarded."""
        stats = self.stats
        lim = stats.limits
        lim["any_hinfo"] = lim.get("any_hinfo", 0) + 1
        stats.rcodes[NOERROR] += 1
        send(answer(data, q, NOERROR, records=any_hinfo(), ancount=1), addr)
        stats.duration["local"].observe(time.perf_counter() - t0)

    def _blocked_over(self, host, data, addr, send) -> bool:
        """One more blocked answer for UDP source ``host``: True if its blocked-answer limit
        dropped or slipped it."""
        lim = self.limiter
        k = lim.keys.get(host) or lim.key(host)
        b = lim.blocked.get(k, 0) + 1
        lim.blocked[k] = b
        return b > lim.blocked_qps and lim.over(host, b, lim.blocked_qps, "blocked", data, addr, send)

    def _zone_answerer(self, sendto):
        """``zone_answer(zones, data, host, key, addr, t0) -> bool`` for one UDP socket: a child
        of a parent blocked before answered from its ZoneAnswer (zones.py), the ZoneAnswer's
        child/reply/count inlined (locals only). False: not answered, take the full path."""
        stats = self.stats
        rcodes, hist, perf = stats.rcodes, stats.duration["local"], time.perf_counter
        counts = hist.counts
        dirty_owner = self
        lim = self.limiter
        rl_blocked, rl_over = lim.blocked, lim.over

        def zone_answer(zones: dict, data: bytes, host: str, k: str, addr, t0: float) -> bool:
            """ZoneAnswer.child/reply/count inlined (zones.py): True if answered here."""
            ln = data[12] if len(data) > 17 else 0
            if not 0 < ln < 64:
                return False
            z = zones.get(data[13 + ln:])
            if z is None or ln > z.room or data[2:12] != z.qhdr:
                return False
            lab = data[12:13 + ln]                       # the first label, length octet first
            if 46 in lab and lab.find(46, 1) >= 0:       # a "." inside the label
                return False
            if not z.clean:                              # some list may name the child: look
                name = lab[1:].lower().decode("latin-1") + z.dotparent
                shards, dicts, _ = dirty_owner._probes    # (zones.named, inlined)
                h = hash(name) & _MASK
                for sh in shards:
                    if name in sh[h]:
                        return False
                for dc in dicts:
                    if name in dc:
                        return False
            b = rl_blocked.get(k, 0) + 1
            rl_blocked[k] = b
            if b > lim.blocked_qps and rl_over(host, b, lim.blocked_qps, "blocked", data, addr, sendto):
                return True
            sendto(b"".join((data[:2], z.hdr, lab, z.rest)), addr)     # ZoneAnswer.reply
            z.n += 1                                     # ZoneAnswer.count
            if z.host == host:
                s = z.labels
                if len(s) < SAMPLES and lab not in s:
                    s.append(lab)
            elif z.host is None:
                z.host, z.labels = host, [lab]
                dirty_owner.dirty.append(z)
            else:
                z.n -= 1
                z.count(host, lab)
            rcodes[z.rcode] += 1
            d = perf() - t0
            if d < 0.0001:
                counts[0] += 1
                hist.total += d
            else:
                hist.observe(d)
            return True
        return zone_answer

    def _cache_hitter(self, sendto):
        """``cache_hit(ac, data, key, cid, addr, t0) -> bool`` for one UDP socket: the answer
        cache's hit path (locals bound once, like :meth:`udp_handler`)."""
        dirty_owner, perf, rcodes = self, time.perf_counter, self.stats.rcodes
        chist = self.stats.duration["cache"]
        ccounts = chist.counts

        def cache_hit(ac, data: bytes, key: bytes, cid, addr, t0: float) -> bool:
            """The answer cache: a fresh entry without CNAME whose name is on no list in this
            generation (allowed for everyone) is sent at once: from ``hot`` (served already in
            this second, cache.py) or found by its hash (``warm_wire``)."""
            if cid is OUTSIDE or (cid is None and dirty_owner.subs[None].refuse) or cid in dirty_owner.suspended:
                return False
            if t0 >= ac.until or ac.sgen != dirty_owner.gen:
                ac.restamp(t0, dirty_owner.gen)     # a new second or generation: hot emptied
            w = ac.hot.get(key)
            if w is None:
                w = dirty_owner.warm_wire(key, t0)
                if w is None:
                    return False
            sendto(data[:2] + w, addr)
            ac.hits += 1
            rcodes[w[1] & 15] += 1
            d = perf() - t0
            ccounts[0 if d < 0.0001 else bisect_left(BUCKETS, d)] += 1      # Histogram.observe, inlined
            chist.total += d
            return True

        return cache_hit

    def _seen_forwarder(self, sendto):
        """``forward_seen(q, data, host, addr, cid, t0) -> bool`` for one UDP socket: a name no
        list matches, seen before, goes straight to the first upstream (without the answer
        cache; with it, :meth:`handle` answers from the cache or forwards)."""
        dirty_owner, lim = self, self.limiter

        def forward_seen(q, data: bytes, host: str, addr, cid, t0: float) -> bool:
            subs = dirty_owner.subs
            sub = subs[cid]
            pool = dirty_owner.pool
            if pool is None or sub.refuse or sub.suspension is not None:
                return False
            if lim.quota_full(host):
                return True
            p = Pending(data, q, host, addr, sub, sendto, False, t0)
            try:
                up = pool.primary        # the first upstream; None while one is down
                if up is not None and up.send(p):
                    p.tried = 1
                else:
                    pool.forward(p)
            except Exception as exc:
                dirty_owner.failed(exc)
            return True

        return forward_seen

    def udp_handler(self, sendto):
        """``on_datagram(data, host, addr, t0)`` for one UDP socket (``t0``: ``perf_counter()``
        when the datagram was read): the cached-answer and the seen-before forwarding paths
        inlined (locals only), everything else through :meth:`handle`. Its ``fast`` attribute
        holds the same paths' tables for the C listener (``_fastudp.c``, :func:`fast_hooks`)."""
        # everything the closure touches, bound once as locals (set-up, not the hot path)
        stats, perf, dirty_owner, miss, lim = self.stats, time.perf_counter, self, _MISS, self.limiter
        rcodes, hist = stats.rcodes, stats.duration["local"]
        counts = hist.counts
        rl_keys, rl_key, rl_counts, rl_blocked, rl_over = lim.keys, lim.key, lim.counts, lim.blocked, lim.over
        cache_hit = self._cache_hitter(sendto)
        rest = self._udp_rest(sendto)

        def on_datagram(data: bytes, host: str, addr, t0: float) -> None:
            stats.udp += 1
            k = rl_keys.get(host) or rl_key(host)     # per-source limits (ratelimit.py)
            n = rl_counts[k] = rl_counts.get(k, 0) + 1
            if n > lim.qps and rl_over(host, n, lim.qps, "queries", data, addr, sendto):
                return
            cid = dirty_owner.hostcache.get(host, miss)
            key = None
            if cid is not miss:
                key = data[2:]
                cache = dirty_owner.answers.get(cid)
                if cache is not None:
                    ent = cache.get(key)
                    if ent is not None:
                        b = rl_blocked[k] = rl_blocked.get(k, 0) + 1
                        if b > lim.blocked_qps and rl_over(host, b, lim.blocked_qps, "blocked", data, addr,
                                                           sendto):
                            return
                        sendto(data[:2] + ent.resp, addr)
                        if not ent.n:
                            dirty_owner.dirty.append(ent)
                        ent.n += 1
                        h = ent.hosts
                        h[host] = h.get(host, 0) + 1
                        rcodes[ent.rcode] += 1
                        d = perf() - t0
                        if d < 0.0001:
                            counts[0] += 1
                            hist.total += d
                        else:
                            hist.observe(d)
                        return
                ac = dirty_owner.acache
                if ac is not None and cache_hit(ac, data, key, cid, addr, t0):
                    return
            rest(data, host, addr, t0, k, cid, key)

        on_datagram.fast = fast_hooks(self, rest, sendto)
        return on_datagram

    def _udp_rest(self, sendto):
        """``rest(data, host, addr, t0, k, cid, key)``: a UDP query that the rate limit, the
        blocked-answer table and the cache's hot path did not answer (``cid``: ``_MISS`` when
        the source is not in the host cache; ``k``: its rate-limit key)."""
        handle, dirty_owner, miss = self.handle, self, _MISS
        zone_answer = self._zone_answerer(sendto)
        forward_seen = self._seen_forwarder(sendto)

        def rest(data: bytes, host: str, addr, t0: float, k: str, cid, key) -> None:
            if cid is not miss and key is not None:
                q = dirty_owner.allowed.get(key)
                if q is not None and dirty_owner.acache is None and forward_seen(q, data, host, addr, cid, t0):
                    return                    # a name no list matches, seen before: forwarded
                zones = dirty_owner.zones.get(cid)
                if zones is not None and zone_answer(zones, data, host, k, addr, t0):
                    return
            try:
                handle(data, host, addr, sendto, False, t0)
            except Exception as exc:  # never let one packet stop the listener
                dirty_owner.failed(exc)

        return rest

    def _local(self, data, q, v: Verdict) -> tuple[bytes, int]:
        """The local answer for a blocking verdict."""
        action = v.action
        ede = v.ede
        records, n = b"", 0
        if action == "sinkhole":
            addr_bytes = None
            if q.qtype == TYPE_A and v.sinkhole_a:
                addr_bytes = self._sinkhole(v.sinkhole_a)
            elif q.qtype == TYPE_AAAA and v.sinkhole_aaaa:
                addr_bytes = self._sinkhole(v.sinkhole_aaaa)
            if addr_bytes is not None:
                records, n = sinkhole_record(q.qtype, addr_bytes), 1
            else:
                ede = 15 if v.cls == "security" else (16 if v.cls == "mandatory" else 17)
        rcode = _RCODE[action]
        return answer(data, q, rcode, ede=ede, text=f"{v.cls} list {v.list}", records=records, ancount=n), rcode

    def _blocked(self, data, q, v: Verdict, host, addr, send, t0) -> None:
        """Answer a block found on the slow path (CNAME inspection): not cached."""
        stats = self.stats
        out, rcode = self._local(data, q, v)
        stats.rcodes[rcode] += 1
        stats.block(v.list, v.cls, v.action)
        self.detections.note(v, host)
        send(out, addr)
        stats.duration["local"].observe(time.perf_counter() - t0)

    def _sinkhole(self, a: str) -> bytes | None:
        b = self._sink.get(a, _MISS)
        if b is _MISS:
            b = self._sink[a] = _packed(a)
        return b

    def _forward(self, data, q, host, addr, sub, send, tcp, t0) -> None:
        pool = self.pool
        if pool is None:
            self.stats.rcodes[SERVFAIL] += 1
            send(answer(data, q, SERVFAIL, ede=22, text="no upstream configured"), addr)
            return
        if self.acache is not None:       # the cache, or forward (within the source's quota)
            self.cached(data, q, host, addr, sub, send, tcp, t0)
            return
        if self.limiter.quota_full(host):
            return
        pool.forward(Pending(data, q, host, addr, sub, send, tcp, t0))

    def reply(self, p: Pending, resp: bytes | None, ede: int) -> None:
        """The upstream's answer (or None and an EDE code) for forwarded query ``p``."""
        if p.__class__ is Fetch:
            if p.host is not None:            # None: a prefetch, no client's quota
                self.limiter.release(p.host)
            if not self.fetched(p, resp):
                return
        else:
            self.limiter.release(p.host)
        if resp is None:
            out = answer(p.data, p.q, SERVFAIL, ede=ede, text="no upstream answered")
        else:
            # a CNAME RR has the bytes 00 05 (its type) after the question: no such bytes, no
            # CNAME, and the answer is not parsed
            if (self.inspect_cnames and (resp[6] or resp[7]) and resp.find(b"\x00\x05", p.qend) >= 0
                    and may_have_cname(resp, p.qend) and self._cname_blocked(p, resp)):
                return
            out = p.data[:2] + resp[2:]
            if len(out) > 512 and not p.tcp:
                limit = min(p.q.edns, self.max_udp) or 512    # clamped (1232: what we advertise)
                if len(out) > limit:
                    out = truncate_for_udp(out, limit)
        self._rcodes[out[3] & 0xF] += 1
        p.send(out, p.addr)
        d = _perf() - p.t0
        hist = self._forwarded                    # Histogram.observe, inlined
        hist.counts[bisect_left(BUCKETS, d)] += 1
        hist.total += d

    def _cname_blocked(self, p: Pending, resp: bytes) -> bool:
        """A CNAME in the answer leads to a name blocked for this client: answer that (True)."""
        lists, sub = self.lists, p.sub
        for target in answer_cnames(resp):
            v = judge_suffixes(sub, lists, suffixes(target)) if target else None
            if v is not None:
                v = Verdict(v.action, v.customer, v.list, v.cls, v.entry, v.name,
                            f"CNAME {target}: {v.reason}", v.sinkhole_a, v.sinkhole_aaaa,
                            via_cname=True)
                self._blocked(p.data, p.q, v, p.host, p.addr, p.send, p.t0)
                return True
        return False

    def failed(self, exc: BaseException) -> None:
        """An unexpected error on the query path: count it, log at most once a minute."""
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 60:
            self._last_error_log = now
            log.error("DNS query path error (%d so far): %r", self.errors, exc, exc_info=exc)


def fast_hooks(engine: Engine, rest, sendto) -> tuple:
    """What the C listener (``_fastudp.c``) needs of ``engine`` for one socket, in the order of
    its ``H_*`` indexes: the engine itself (its tables are read through it, so a swap is seen),
    the rate limiter's tables, ``rest`` for everything else, and the counters it adds to."""
    lim, stats = engine.limiter, engine.stats
    hooks = (engine, lim.keys, lim.key, lim.counts, lim.blocked, lim.over, lim, rest, sendto, stats,
             stats.rcodes, stats.duration["local"], stats.duration["cache"], BUCKETS, OUTSIDE, _MISS,
             engine.failed, SAMPLES, _MASK, (cache.P, cache.Q, cache.HOT_MAX))
    assert len(hooks) == NATIVE_HOOKS, "mmsg.NATIVE_HOOKS and _fastudp.c's H_* must follow fast_hooks"
    return hooks
