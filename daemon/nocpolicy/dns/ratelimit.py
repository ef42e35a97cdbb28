"""Per-source limits on the UDP query path (one infected client must not starve the others), modelled on unbound's ``ip-ratelimit``,
dnsdist's ``MaxQPSIPRule`` and BIND's response-rate limiting (RRL) ``slip``.

* **Queries per second per source prefix** (IPv4 /32, IPv6 /56 by default: one customer's
  delegated prefix). Counted in fixed one-second windows (like unbound): a dict of counts
  cleared every second by :meth:`tick`. Past ``qps`` the query is dropped, except every
  ``slip``-th limited query, which is answered with an empty TC=1 answer so that a real client
  behind the address retries over TCP (TCP is never rate limited: its source cannot be forged).
  At most ``max(qps, SLIP_MIN)`` such answers per second per source: a flooder that sends its
  next query as soon as it gets an answer (a closed loop, like dnsperf or a retrying stub)
  would otherwise be fed half its rate in answers and keep the guard, and the socket buffer it
  shares with every customer, saturated. Past that everything is dropped with no work but
  counting (as unbound's ``ip-ratelimit`` and dnsdist's ``MaxQPSIPRule`` drop). Such a source
  address is **muted** for the rest of the second: a socket filter drops its datagrams in the
  kernel, before they are queued behind or in front of anybody's (mutefilter.py), and the
  batched listener (mmsg.py) drops those already queued as it reads them, before copying them
  or calling the engine; both are counted.
* **Blocked answers per second per source prefix**, a separate and lower limit: an infected
  machine's C&C lookups are answered, logged and counted, but a flood of them is not.
* **Exemptions** by customer (``public_safety: true`` or a tag in ``exempt_tags``).
* **Pending upstream queries per source prefix** (``max_pending``): one client cannot fill the
  50,000-entry table of queries waiting for the upstream; past it the query is dropped.

The engine inlines the counting (two dict operations per datagram); everything here runs
only for a source that is over a limit. Counters land in ``stats.limits`` (metrics).
"""

from __future__ import annotations

import ipaddress

from ..clock import monotonic
from .mutefilter import MAX_ADDRESSES, MuteFilter
from .wire import NOERROR, WireError, answer, parse_query

KEYS_MAX = 65536
SLIP_MIN = 100             # slipped (TC) answers per second per source allowed even under a low limit
NEVER = 1 << 62            # "no limit": a count that is never reached


class RateLimiter:
    def __init__(self, stats, conf=None):
        self.stats = stats
        self.counts: dict[str, int] = {}       # source key -> queries in this second
        self.blocked: dict[str, int] = {}      # source key -> blocked answers in this second
        self.pending: dict[str, int] = {}      # source key -> queries waiting for the upstream
        self.keys: dict[str, str] = {}         # client address -> source key
        self.muted: dict[str, int] = {}        # address -> datagrams dropped unread this second
        self.exempt: frozenset = frozenset()   # customer ids
        self.customer_of = lambda host: None
        self.mute_filter = MuteFilter()        # the listeners add their UDP sockets (server.py)
        self.window_start = monotonic()
        self.muted_rate: dict[str, float] = {}  # muted address -> its estimated rate (per second)
        self.sampled: dict[str, float] = {}     # address -> share the filter lets through this window
        self.configure(conf)

    def configure(self, conf, exempt: frozenset = frozenset()) -> None:
        """Apply ``dns.ratelimit`` (None: the defaults of policy/dnsguard.py)."""
        if conf is None:
            from ..policy.dnsguard import RateLimit
            conf = RateLimit()
        self.qps = conf.qps or NEVER
        self.blocked_qps = conf.blocked_qps or NEVER
        self.slip = conf.slip
        self.v4_shift, self.v6_shift = 32 - conf.ipv4_prefix, 128 - conf.ipv6_prefix
        self.max_pending = conf.max_pending
        self.exempt = exempt
        self.keys.clear()

    def tick(self) -> None:
        """Start a new one-second window (called every second)."""
        self.counts.clear()
        self.blocked.clear()
        self.window_start = monotonic()
        keep = self._still_flooding()
        if self.muted or self.sampled:
            n = sum(self.muted.values())
            self.muted.clear()                 # in place: the listeners hold this dict
            k = self.mute_filter.clear(keep)   # dropped in the kernel, never read
            limits = self.stats.limits
            limits["queries_dropped"] = limits.get("queries_dropped", 0) + n + k
            if k:
                limits["socket_filtered"] = limits.get("socket_filtered", 0) + k
            self.stats.udp += n
        self.sampled = keep

    def _still_flooding(self) -> dict[str, float]:
        """Sources muted in the window that ends, at a rate far past their allowance: the share
        of their datagrams the socket filter lets through in the next window, so that the guard
        reads about twice what it would answer (their quota, then the slips) instead of the
        whole flood arriving at once and queueing in front of everybody's queries."""
        allow = 2 * (self.qps + (self.slip_cap(self.qps) * self.slip if self.slip else 0))
        over = sorted(((r, h) for h, r in self.muted_rate.items() if r > allow), reverse=True)
        self.muted_rate = {}
        return {h: allow / r for r, h in over[:MAX_ADDRESSES]}      # the filter's capacity

    def key(self, host: str) -> str:
        """The source key of ``host``: the address itself, or its prefix when shorter."""
        keys = self.keys
        k = keys.get(host)
        if k is None:
            if len(keys) >= KEYS_MAX:
                keys.clear()
            k = keys[host] = self._prefix(host)
        return k

    def _prefix(self, host: str) -> str:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        shift = self.v4_shift if ip.version == 4 else self.v6_shift
        if not shift:
            return str(ip)
        bits = 32 if ip.version == 4 else 128
        return f"{ipaddress.ip_network((int(ip) >> shift << shift, bits - shift))}"

    # -- slow paths: a source over a limit ----------------------------------------

    def over(self, host: str, n: int, limit: int, kind: str, data: bytes, addr, send) -> bool:
        """Source ``host`` sent its ``n``-th query (or blocked answer, ``kind``) of this second,
        over ``limit``. True: the query has been handled here (dropped or slipped)."""
        limits = self.stats.limits
        if self.exempt and self.customer_of(host) in self.exempt:
            limits["exempt"] = limits.get("exempt", 0) + 1
            return False
        slip, m = self.slip, n - limit
        if slip and m % slip == 0 and m <= self.slip_cap(limit) * slip:
            tc = truncated_reply(data)
            if tc is not None:
                send(tc, addr)
                k = _SLIPPED[kind]
                limits[k] = limits.get(k, 0) + 1
                return True
        k = _DROPPED[kind]
        limits[k] = limits.get(k, 0) + 1
        if kind == "queries" and (not slip or m > self.slip_cap(limit) * slip) and host not in self.muted:
            self.muted[host] = 0               # nothing more is answered to it this second
            self.mute_filter.mute(host)
            # its rate: what it sent until now (of which the filter let ``sampled`` through)
            elapsed = max(0.05, monotonic() - self.window_start)
            self.muted_rate[host] = n / self.sampled.get(host, 1.0) / elapsed
        return True

    @staticmethod
    def slip_cap(limit: int) -> int:
        return limit if limit > SLIP_MIN else SLIP_MIN

    def quota_full(self, host: str) -> bool:
        """Count one more pending upstream query for ``host``; True (and not counted) when its
        source already has ``max_pending`` waiting."""
        k = self.keys.get(host) or self.key(host)
        pend = self.pending
        n = pend.get(k, 0)
        if n >= self.max_pending and not (self.exempt and self.customer_of(host) in self.exempt):
            limits = self.stats.limits
            limits["pending_quota"] = limits.get("pending_quota", 0) + 1
            return True
        pend[k] = n + 1
        return False

    def release(self, host: str) -> None:
        """A pending upstream query of ``host`` got its answer (or its final failure)."""
        k = self.keys.get(host) or self.key(host)
        pend = self.pending
        n = pend.get(k, 0)
        if n > 1:
            pend[k] = n - 1
        elif n:
            del pend[k]


_SLIPPED = {"queries": "queries_slipped", "blocked": "blocked_slipped"}
_DROPPED = {"queries": "queries_dropped", "blocked": "blocked_dropped"}


def truncated_reply(data: bytes) -> bytes | None:
    """An empty answer with TC=1 to query ``data`` (None if it is not a query we can answer)."""
    try:
        q = parse_query(data)
    except WireError:
        return None
    out = bytearray(answer(data, q, NOERROR))
    out[2] |= 0x02
    return bytes(out)
