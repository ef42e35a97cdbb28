"""DNS counters: plain integers on the hot path, a Prometheus collector at scrape time.

Labels are bounded: transport, rcode, list, class, action, upstream, result,
path. Never a customer, client or domain label (Art. 37).
"""

from __future__ import annotations

import bisect

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .wire import RCODE_NAMES

BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0)


class Histogram:
    __slots__ = ("counts", "total")

    def __init__(self):
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, c in zip(BUCKETS, self.counts, strict=False):
            acc += c
            out.append((repr(bound), acc))
        out.append(("+Inf", acc + self.counts[-1]))
        return out


class DnsStats:
    """Every DNS counter of one process."""

    def __init__(self):
        self.udp = 0                       # UDP queries (a plain attribute: the hottest counter)
        self.queries = {"udp": 0, "tcp": 0}
        self.rcodes = [0] * 16
        self.blocked: dict[tuple[str, str, str], int] = {}
        self.upstream: dict[tuple[str, str], int] = {}
        self.duration = {"local": Histogram(), "forwarded": Histogram(), "cache": Histogram()}
        self.cache: dict[str, int] = {}    # answer-cache counters (AnswerCache.counters), at drain
        self.malformed = 0
        self.send_drops = 0                # UDP datagrams the kernel would not take (batched I/O)
        self.limits: dict[str, int] = {}   # hostile-traffic defences by kind (guardstats.py)

    def block(self, lst: str, cls: str, action: str, n: int = 1) -> None:
        key = (lst, cls, action)
        self.blocked[key] = self.blocked.get(key, 0) + n

    def upstream_result(self, upstream: str, result: str, n: int = 1) -> None:
        key = (upstream, result)
        self.upstream[key] = self.upstream.get(key, 0) + n

    def snapshot(self) -> dict:
        return {"queries": {"udp": self.udp + self.queries["udp"], "tcp": self.queries["tcp"]},
                "responses": {RCODE_NAMES.get(i, str(i)): n for i, n in enumerate(self.rcodes) if n},
                "blocked": sum(self.blocked.values()), "malformed": self.malformed,
                "send_drops": self.send_drops}


def merge(stats_list) -> DnsStats:
    """The counters of every process (main + DNS workers) added up."""
    total = DnsStats()
    for s in stats_list:
        total.udp += s.udp
        for k, v in s.queries.items():
            total.queries[k] = total.queries.get(k, 0) + v
        total.rcodes = [a + b for a, b in zip(total.rcodes, s.rcodes, strict=True)]
        for k, v in s.blocked.items():
            total.blocked[k] = total.blocked.get(k, 0) + v
        for k, v in s.upstream.items():
            total.upstream[k] = total.upstream.get(k, 0) + v
        for k, h in s.duration.items():
            agg = total.duration[k]
            agg.counts = [a + c for a, c in zip(agg.counts, h.counts, strict=True)]
            agg.total += h.total
        total.malformed += s.malformed
        total.send_drops += s.send_drops
    return total


def query_metrics(t: DnsStats):
    q = CounterMetricFamily("nocpolicy_dns_queries", "DNS queries received", labels=["transport"])
    for k in ("udp", "tcp"):
        q.add_metric([k], t.queries.get(k, 0) + (t.udp if k == "udp" else 0))
    r = CounterMetricFamily("nocpolicy_dns_responses", "DNS responses sent", labels=["rcode"])
    for i, v in enumerate(t.rcodes):
        if v or i in (0, 2, 3, 5):
            r.add_metric([RCODE_NAMES.get(i, str(i))], v)
    b = CounterMetricFamily("nocpolicy_dns_blocked", "Queries blocked", labels=["list", "class", "action"])
    for (lst, cls, action), v in sorted(t.blocked.items()):
        b.add_metric([lst, cls, action], v)
    u = CounterMetricFamily("nocpolicy_dns_upstream_queries", "Queries sent upstream by result",
                            labels=["upstream", "result"])
    for (up, res), v in sorted(t.upstream.items()):
        u.add_metric([up, res], v)
    m = CounterMetricFamily("nocpolicy_dns_malformed", "Malformed packets answered FORMERR or dropped")
    m.add_metric([], t.malformed)
    h = HistogramMetricFamily("nocpolicy_dns_request_duration_seconds",
                              "Time from query received to answer sent", labels=["path"])
    for path, hist in t.duration.items():
        h.add_metric([path], hist.buckets(), hist.total)
    sd = CounterMetricFamily("nocpolicy_dns_send_drops", "UDP answers or forwarded queries dropped "
                             "because the socket buffer was full or the kernel refused them")
    sd.add_metric([], t.send_drops)
    return q, r, b, u, m, h, sd


def list_metrics(states):
    e = GaugeMetricFamily("nocpolicy_blocklist_entries", "Entries in force per list", labels=["list"])
    ts = GaugeMetricFamily("nocpolicy_blocklist_last_success_timestamp_seconds",
                           "When each list was last loaded or refreshed successfully", labels=["list"])
    f = CounterMetricFamily("nocpolicy_blocklist_refresh_failures", "Refreshes that failed or were "
                            "refused (shrink guard); the last good copy stays in force", labels=["list"])
    for st in states:
        e.add_metric([st.id], st.entries)
        ts.add_metric([st.id], st.last_success or 0)
        f.add_metric([st.id], st.failures)
    return e, ts, f


CACHE_COUNTERS = (("hits", "Queries answered from the answer cache (fresh entries)"),
                  ("misses", "Cacheable queries forwarded because no fresh entry was cached"),
                  ("evictions", "Entries evicted to stay within max_entries / max_bytes"),
                  ("stale_answers", "Expired entries served because no upstream answered (RFC 8767)"),
                  ("prefetches", "Popular entries refreshed shortly before they expired"))
CACHE_GAUGES = (("entries", "Entries in the answer cache"),
                ("bytes", "Estimated memory of the answer cache's entries"))


def cache_metrics(stats_list):
    """The answer cache's counters and gauges, summed over the processes (workers cache apart)."""
    total: dict[str, int] = {}
    for s in stats_list:
        for k, v in s.cache.items():
            total[k] = total.get(k, 0) + v
    for name, doc in CACHE_COUNTERS:
        c = CounterMetricFamily(f"nocpolicy_dns_cache_{name}", doc)
        c.add_metric([], total.get(name, 0))
        yield c
    for name, doc in CACHE_GAUGES:
        g = GaugeMetricFamily(f"nocpolicy_dns_cache_{name}", doc)
        g.add_metric([], total.get(name, 0))
        yield g


class DnsCollector:
    """Computes every DNS metric at scrape time from the guard's plain integers."""

    def __init__(self, guard):
        self.guard = guard

    def describe(self):
        return []

    def collect(self):
        g = self.guard
        g.engine.drain()
        stats_list = g.all_stats()
        yield from query_metrics(merge(stats_list))
        yield from list_metrics(g.list_states())
        yield from cache_metrics(stats_list)


# -- between processes (DNS workers report their counters as one JSON line) ----------------

def stats_to_json(s: DnsStats) -> dict:
    return {"udp": s.udp, "queries": s.queries, "rcodes": s.rcodes, "malformed": s.malformed,
            "send_drops": s.send_drops, "limits": s.limits, "cache": s.cache,
            "blocked": [[*k, v] for k, v in s.blocked.items()],
            "upstream": [[*k, v] for k, v in s.upstream.items()],
            "duration": {k: [h.counts, h.total] for k, h in s.duration.items()}}


def stats_from_json(d: dict) -> DnsStats:
    s = DnsStats()
    s.udp, s.queries, s.rcodes, s.malformed = d["udp"], d["queries"], d["rcodes"], d["malformed"]
    s.send_drops = d.get("send_drops", 0)
    s.limits = dict(d.get("limits") or {})
    s.cache = dict(d.get("cache") or {})
    s.blocked = {(a, b, c): v for a, b, c, v in d["blocked"]}
    s.upstream = {(a, b): v for a, b, v in d["upstream"]}
    for k, (counts, total) in d["duration"].items():
        h = Histogram()
        h.counts, h.total = counts, total
        s.duration[k] = h
    return s
