"""Utilisation: per-class and per-customer counters read from the kernel, exposed at scrape time.

:class:`Usage` is a plain snapshot the component refreshes periodically
(``tc -s class show`` per interface, nft per-element counters of the cap maps);
:class:`QosCollector` turns it into metrics. Labels stay bounded: interface and
named class; customer series only when the operator asks (``--customer-metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .plan import Plan

NAMED = {"link", "network-control", "priority", "ordinary", "default"}
OVER = 0.9      # a capped class sending at >= 90% of its ceiling with overlimits is "at its cap"


@dataclass
class Usage:
    classes: dict[tuple[str, str], list[int]] = field(default_factory=dict)   # (iface, class) -> [bytes, pkts, drops]
    customers: dict[str, list[int]] = field(default_factory=dict)            # customer -> [bytes, packets]
    customers_up: dict[str, list[int]] = field(default_factory=dict)         # uploads: customer -> [bytes, pkts]
    over_limit: list[str] = field(default_factory=list)
    at: float = 0.0


def read_usage(backend, plan: Plan, previous: Usage | None, now: float) -> tuple[Usage, dict]:
    """One snapshot from the kernel; returns it and the raw per-class stats (for the next rate estimate)."""
    u = Usage(at=now)
    raw = {}
    over = set()
    for tree in (*plan.interfaces, *(up.tree for up in plan.uploads)):
        stats = backend.class_stats(tree.name)
        ceilings = {c.minor: c.ceil for c in tree.classes}
        names = {c.minor: c.name for c in tree.classes}
        for minor, k in stats.items():
            name = names.get(minor, "unknown")
            key = (tree.name, name if name in NAMED else "customer-caps")
            acc = u.classes.setdefault(key, [0, 0, 0])
            acc[0] += k.bytes
            acc[1] += k.packets
            acc[2] += k.drops
            raw[(tree.name, minor)] = (k.bytes, k.overlimits)
            if name.startswith("up:"):                    # one upload class per customer and interface
                up = u.customers_up.setdefault(name[3:], [0, 0])
                up[0] += k.bytes
                up[1] += k.packets
            if name.startswith(("cap:", "ecap:", "up:")) and previous is not None and previous.at and now > previous.at:
                old = getattr(previous, "_raw", {}).get((tree.name, minor))
                if old:
                    rate = (k.bytes - old[0]) * 8 / (now - previous.at)
                    if k.overlimits > old[1] and rate >= OVER * ceilings.get(minor, 1):
                        over.add(name.split(":", 1)[1])
    owner = {e.prefix: e.note.removeprefix("customer ") for e in plan.caps}
    if plan.emergency:
        owner.update({e.prefix: e.note.removeprefix("customer ") for e in plan.emergency.caps})
    for m in ("caps4", "caps6", "ecaps4", "ecaps6"):
        for prefix, b, p in backend.map_counters(m):
            cid = owner.get(prefix)
            if cid:
                acc = u.customers.setdefault(cid, [0, 0])
                acc[0] += b
                acc[1] += p
    u.over_limit = sorted(over)
    u._raw = raw   # type: ignore[attr-defined]
    return u, raw


class QosCollector:
    """Every qos metric, computed from the component's plain state at scrape time."""

    def __init__(self, component):
        self.c = component

    def collect(self):
        c = self.c
        active = c.active_profile()
        g = GaugeMetricFamily("nocpolicy_emergency_active", "1 while an emergency with this profile is declared",
                              labels=["profile"])
        for p in c.profiles():
            g.add_metric([p], 1.0 if p == active else 0.0)
        yield g
        u: Usage = c.usage_snapshot()
        b = CounterMetricFamily("nocpolicy_class_bytes", "Bytes sent per shaping class (tc)",
                                labels=["interface", "class"])
        p = CounterMetricFamily("nocpolicy_class_packets", "Packets sent per shaping class (tc)",
                                labels=["interface", "class"])
        d = CounterMetricFamily("nocpolicy_class_drops", "Packets dropped per shaping class (tc)",
                                labels=["interface", "class"])
        for (iface, cls), (nb, npk, nd) in sorted(c.class_totals().items()):
            b.add_metric([iface, cls], nb)
            p.add_metric([iface, cls], npk)
            d.add_metric([iface, cls], nd)
        yield b
        yield p
        yield d
        yield GaugeMetricFamily("nocpolicy_customers_over_limit",
                                "Customers sending at their cap (shaped) at the last reading",
                                value=len(u.over_limit))
        e = CounterMetricFamily("nocpolicy_enforcement_errors", "Failed applies (rolled back)", labels=["backend"])
        e.add_metric([c.backend_name], c.errors)
        yield e
        yield GaugeMetricFamily("nocpolicy_enforcement_enforcing",
                                "1 when the rules are in the kernel, 0 when plan-only or off", value=c.enforcing)
        if c.customer_metrics:
            cb = CounterMetricFamily("nocpolicy_customer_bytes", "Bytes towards each customer (opt-in)",
                                     labels=["customer"])
            for cid, (nb, _) in sorted(c.customer_totals().items()):
                cb.add_metric([cid], nb)
            yield cb
