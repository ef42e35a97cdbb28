"""MQTT and fleet metrics, computed at scrape time from the bridge's plain counters."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

COMMAND_RESULTS = ("ok", "refused", "invalid", "failed", "busy", "retained", "too_large", "rate_limited")
APPLY_RESULTS = ("applied", "recorded", "failed")


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

