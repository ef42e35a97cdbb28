"""Daemon-level metrics (the /metrics, /healthz, /readyz endpoint is control/metrics_http.py).

Every metric takes the registry passed in (tests build their own). Component
metrics come from each component's ``collectors()``: hot-path counters are plain
integers exposed at scrape time, never a lock per increment.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__

# The classic text format every Prometheus 2.x/3.x scrapes; generate_latest() writes it
# for our ASCII metric names whatever the prometheus-client version.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.build_info = Gauge("nocpolicy_build_info", "nocpolicy build (value 1)",
                                ["version", "python"], registry=registry)
        self.reloads = Counter("nocpolicy_policy_reloads", "Policy loads and reloads by result",
                               ["result"], registry=registry)
        self.last_success = Gauge("nocpolicy_policy_last_reload_success_timestamp_seconds",
                                  "When a policy was last loaded successfully (Unix time)", registry=registry)
        self.last_failed = Gauge("nocpolicy_policy_last_reload_failed",
                                 "1 if the most recent reload attempt was refused, else 0", registry=registry)
        self.policy_info = Gauge("nocpolicy_policy_info", "The policy in force (value 1)", ["version"],
                                 registry=registry)
        for result in ("success", "failure"):
            self.reloads.labels(result)
        import platform
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self._version: str | None = None

    def policy_loaded(self, version: str, when: float) -> None:
        self.reloads.labels("success").inc()
        self.last_success.set(when)
        self.last_failed.set(0)
        if self._version is not None and self._version != version:
            self.policy_info.remove(self._version)
        self.policy_info.labels(version).set(1)
        self._version = version

    def policy_unchanged(self, when: float) -> None:
        """A reload found the policy in force: a success that changes nothing."""
        self.reloads.labels("success").inc()
        self.last_success.set(when)
        self.last_failed.set(0)

    def policy_refused(self) -> None:
        self.reloads.labels("failure").inc()
        self.last_failed.set(1)


class ComponentCollector:
    """``nocpolicy_component_up{component}`` computed at scrape time."""

    def __init__(self, components):
        self._components = components

    def collect(self):
        g = GaugeMetricFamily("nocpolicy_component_up", "1 if the component is running (or disabled by "
                              "policy), 0 if failed or stopped", labels=["component"])
        restarts = CounterMetricFamily("nocpolicy_task_restarts", "Background loops restarted after a failure "
                                       "(the traceback is in the log)", labels=["component", "task"])
        for c in self._components():
            g.add_metric([c.name], 1.0 if c.up else 0.0)
            for task, n in sorted(c.tasks.restarts.items()):
                restarts.add_metric([c.name, task], float(n))
        yield g
        yield restarts


class EventBusCollector:
    def __init__(self, bus):
        self._bus = bus

    def collect(self):
        yield CounterMetricFamily("nocpolicy_events_dropped", "Events dropped because a consumer's queue "
                                  "was full", value=self._bus.dropped)
