"""Metrics of the defences against hostile traffic, summed over the worker processes.

No customer, client or name labels (Art. 37): only the kind of limit. The counters are the
plain dict ``DnsStats.limits`` that ratelimit.py, tcp.py, acl (engine), upstream.py and the
detection log increment.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# metric name, help, label name, {label value: counter key}
_FAMILIES = (
    ("nocpolicy_dns_ratelimited", "UDP queries over a per-source limit, by limit and what was done "
     "(dropped, or answered TC=1: slip)", ("limit", "action"),
     {("queries", "dropped"): "queries_dropped", ("queries", "truncated"): "queries_slipped",
      ("blocked", "dropped"): "blocked_dropped", ("blocked", "truncated"): "blocked_slipped"}),
    ("nocpolicy_dns_ratelimit_socket_filtered", "Of the dropped queries over the per-source limit, "
     "those the kernel dropped before the guard read them (socket filter of muted sources)", (),
     {(): "socket_filtered"}),
    ("nocpolicy_dns_ratelimit_exempt", "Queries over a per-source limit let through because the "
     "customer is exempt (public safety)", (), {(): "exempt"}),
    ("nocpolicy_dns_pending_quota_drops", "Queries dropped because their source already had "
     "dns.ratelimit.max_pending queries waiting for the upstream", (), {(): "pending_quota"}),
    ("nocpolicy_dns_access_refused", "Queries answered REFUSED because the source is outside "
     "the access list (dns.access_control)", (), {(): "acl_refused"}),
    ("nocpolicy_dns_tcp_refused", "TCP connections closed at once, by the limit they hit", ("reason",),
     {("per_ip",): "tcp_per_ip", ("max_connections",): "tcp_max_connections"}),
    ("nocpolicy_dns_tcp_read_paused", "Times a TCP connection stopped being read, by cause", ("reason",),
     {("write_buffer",): "tcp_paused_write", ("in_flight",): "tcp_paused_in_flight"}),
    ("nocpolicy_dns_tcp_fallback_refused", "Truncated upstream answers passed on to a TCP client "
     "as they are because the upstream TCP re-asks were at their cap", (), {(): "tcp_fallback_cap"}),
    ("nocpolicy_dns_any_answered", "ANY queries over UDP answered with the RFC 8482 HINFO record", (),
     {(): "any_hinfo"}),
    ("nocpolicy_dns_detections_dropped", "Blocks not written to the detection log, by the cap that "
     "dropped them", ("reason",),
     {("client_cap",): "detections_client_cap", ("interval_cap",): "detections_interval_cap",
      ("pending",): "detections_pending", ("write_error",): "detections_write_error"}),
    ("nocpolicy_dns_kernel_meter_dropped", "UDP datagrams to the guard dropped by the kernel meter "
     "(dns.ratelimit.kernel_qps) before the guard read them", (), {(): "kernel_dropped"}),
    ("nocpolicy_dns_kernel_meter_errors", "Failures to apply or read back the kernel meter's nftables "
     "table", (), {(): "kernel_errors"}),
    ("nocpolicy_dns_detection_rows_evicted", "Oldest detection rows deleted because the state store "
     "reached dns.detection_log.store_max", (), {(): "detection_rows_evicted"}),
)


class GuardCollector:
    def __init__(self, guard):
        self.guard = guard

    def describe(self):
        return []

    def collect(self):
        g = self.guard
        total: dict[str, int] = {}
        for s in g.all_stats():
            for k, v in s.limits.items():
                total[k] = total.get(k, 0) + v
        for name, doc, labels, keys in _FAMILIES:
            m = CounterMetricFamily(name, doc, labels=list(labels))
            for lv, key in keys.items():
                m.add_metric(list(lv), total.get(key, 0))
            yield m
        k = GaugeMetricFamily("nocpolicy_dns_pseudonym_key_age_seconds",
                              "Age of the pseudonym key in force (rotated every dns.detection_log.key_rotation)")
        k.add_metric([], g.key_age())
        yield k
