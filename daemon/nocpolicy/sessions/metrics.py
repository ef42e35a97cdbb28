"""Session metrics, computed at scrape time. No customer, login or address labels (Art. 37)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

SOURCES = ("radius", "kea4", "kea6")


class SessionsCollector:
    def __init__(self, component):
        self.c = component

    def collect(self):
        c = self.c
        active = c.table.count_by_source()
        g = GaugeMetricFamily("nocpolicy_sessions_active", "Live sessions by source", labels=["source"])
        for src in SOURCES:
            g.add_metric([src], active.get(src, 0))
        yield g
        req = CounterMetricFamily("nocpolicy_sessions_accounting_requests",
                                  "RADIUS accounting requests by Acct-Status-Type and result (ok, duplicate, "
                                  "or why it was dropped)", labels=["status", "result"])
        for (status, result), n in sorted(c.protocol.counts.items()):
            req.add_metric([status, result], n)
        yield req
        book = c.book.counts
        for name, key, doc in (
                ("unattributed", "unattributed", "Sessions whose customer id could not be extracted"),
                ("stale_closed", "stale", "Sessions closed because no update came within interval + grace"),
                ("no_start", "no_start", "Updates or Stops for a session never started (recorded anyway)"),
                ("duplicate_stops", "duplicate_stop", "Stops for a session already closed (not recorded twice)"),
                ("displaced", "displaced", "Sessions closed because a new session took their address"),
                ("table_full", "full", "Sessions not tracked because the live table was full"),
                ("conflicts", "conflict", "Session addresses inside a static customer prefix (static wins)")):
            yield CounterMetricFamily(f"nocpolicy_sessions_{name}", doc, value=book.get(key, 0))
        w = CounterMetricFamily("nocpolicy_sessions_whois_lookups", "whois lookups by result",
                                labels=["result"])
        for result in ("found", "unattributed", "error"):
            w.add_metric([result], c.whois_counts.get(result, 0))
        yield w
        commits = CounterMetricFamily("nocpolicy_sessions_commits", "Group commits of session history by result",
                                      labels=["result"])
        commits.add_metric(["ok"], c.commit.commits)
        commits.add_metric(["failure"], c.commit.failures)
        yield commits
        kea = CounterMetricFamily("nocpolicy_sessions_lease_lines", "Kea lease file lines read by result",
                                  labels=["result"])
        kea.add_metric(["ok"], sum(f.counts.get("lines", 0) for f in c.followers.values()))
        kea.add_metric(["bad"], sum(f.counts.get("bad", 0) for f in c.followers.values()))
        yield kea
        yield CounterMetricFamily("nocpolicy_sessions_pruned", "History sessions deleted past the retention",
                                  value=c.pruned)
