"""MQTT and fleet metrics, computed at scrape time from the bridge's plain counters."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .statewire import REASONS

COMMAND_RESULTS = ("ok", "refused", "invalid", "failed", "busy", "retained", "too_large", "rate_limited")
APPLY_RESULTS = ("applied", "recorded", "failed")
STATE_REFUSALS = (*REASONS, "overflow")


class MqttCollector:
    def __init__(self, bridge):
        self.b = bridge

    def collect(self):
        b = self.b
        link = b.link
        yield GaugeMetricFamily("nocpolicy_mqtt_connected", "1 while connected to the MQTT broker",
                                value=1.0 if link is not None and link.connected.is_set() else 0.0)
        yield CounterMetricFamily("nocpolicy_mqtt_connects", "Successful connections to the broker",
                                  value=link.connects if link else 0)
        yield CounterMetricFamily("nocpolicy_mqtt_connection_failures",
                                  "Failed connection attempts and lost connections", value=link.failures if link else 0)
        c = CounterMetricFamily("nocpolicy_mqtt_commands", "Commands received over MQTT by result",
                                labels=["result"])
        for r in COMMAND_RESULTS:
            c.add_metric([r], b.inbox.results[r])
        yield c
        yield CounterMetricFamily("nocpolicy_mqtt_events_published", "Events published to the broker",
                                  value=b.outbox.published)
        yield CounterMetricFamily("nocpolicy_mqtt_events_dropped", "Events lost because the bounded "
                                  "outbox was full (broker unreachable or slow)", value=b.outbox.dropped)
        yield GaugeMetricFamily("nocpolicy_mqtt_outbox_events", "Events waiting to be published",
                                value=len(b.outbox))
        ctl = b.controller
        if ctl is not None:
            g = GaugeMetricFamily("nocpolicy_fleet_nodes", "Fleet nodes by convergence state", labels=["state"])
            for state, n in ctl.tracker.counts().items():
                g.add_metric([state], n)
            yield g
            h = ctl.tracker.converge
            hist = HistogramMetricFamily("nocpolicy_fleet_converge_seconds",
                                         "Time from publishing a plan version to a node's good ack")
            hist.add_metric([], h.samples(), sum_value=h.sum)
            yield hist
            yield GaugeMetricFamily("nocpolicy_fleet_plan_version", "Plan version the controller published",
                                    value=ctl.version)
        yield from _state_metrics(b)
        agent = b.agent
        if agent is not None:
            yield GaugeMetricFamily("nocpolicy_fleet_plan_applied_version",
                                    "Plan version this agent last applied (0: none)",
                                    value=(agent.applied or {}).get("version") or 0)
            a = CounterMetricFamily("nocpolicy_fleet_plan_applies", "Plans handled by this agent by result",
                                    labels=["result"])
            for r in APPLY_RESULTS:
                a.add_metric([r], agent.results[r])
            yield a



def _state_metrics(b):
    """Fleet state: versions, convergence per kind, refusals (labels: kind, scope, state, reason only)."""
    pub = b.state_pub
    if pub is not None:
        v = GaugeMetricFamily("nocpolicy_fleet_state_version", "Latest version of each kind of fleet state "
                              "the controller published", labels=["kind"])
        for kind in pub.kinds:
            v.add_metric([kind], pub.versions.get(kind, 0))
        yield v
        hist = HistogramMetricFamily("nocpolicy_fleet_state_converge_seconds",
                                     "Time from publishing fleet state until a node acknowledged holding it",
                                     labels=["kind"])
        for kind, h in sorted(pub.tracker.converge.items()):
            hist.add_metric([kind], h.samples(), sum_value=h.sum)
        yield hist
        g = GaugeMetricFamily("nocpolicy_fleet_state_nodes", "Fleet nodes by kind of state and convergence",
                              labels=["kind", "state"])
        rows = b.fleet_status().get("state", {}).get("rows", [])
        for kind in pub.kinds:
            for state in ("converged", "pending", "offline"):
                g.add_metric([kind, state], sum(1 for r in rows if r["kind"] == kind and r["state"] == state))
        yield g
    if b.sessions_up is not None:
        yield CounterMetricFamily("nocpolicy_fleet_sessions_sent", "Session starts and stops sent to the "
                                  "controller (acknowledged by the broker)", value=b.sessions_up.sent)
        yield CounterMetricFamily("nocpolicy_fleet_sessions_dropped", "Session events dropped because the "
                                  "upward outbox was full", value=b.sessions_up.dropped)
        yield GaugeMetricFamily("nocpolicy_fleet_sessions_queued", "Session events waiting to be sent",
                                value=len(b.sessions_up.queue))
        yield GaugeMetricFamily("nocpolicy_fleet_sessions_kept", "Session stops not yet sent kept in the "
                                "agent's store (they survive a restart)", value=b.sessions_up.kept)
    if pub is not None:
        yield CounterMetricFamily("nocpolicy_fleet_upward_refused", "Upward messages (sessions, detection "
                                  "counts) from agents refused", value=(b.sessions_in.refused if b.sessions_in else 0)
                                  + (b.fleet_detections.refused if b.fleet_detections else 0))
    agent = b.state_agent
    if agent is not None:
        h = GaugeMetricFamily("nocpolicy_fleet_state_held_version", "Version of each fleet state stream "
                              "this agent holds", labels=["kind", "scope"])
        for kind, scopes in agent.holder.versions().items():
            for scope, version in scopes.items():
                h.add_metric([kind, scope], version)
        yield h
        r = CounterMetricFamily("nocpolicy_fleet_state_refused", "Fleet state messages refused by this agent",
                                labels=["reason"])
        for reason in STATE_REFUSALS:
            r.add_metric([reason], agent.refused[reason])
        yield r
        a = CounterMetricFamily("nocpolicy_fleet_state_applied", "Fleet state versions applied by this agent",
                                labels=["kind"])
        for kind in agent.kinds:
            a.add_metric([kind], agent.applied[kind])
        yield a
