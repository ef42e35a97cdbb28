#!/usr/bin/env python3
"""Writes nocpolicy-dashboard.json (the Grafana dashboard) next to this script.

The dashboard is generated so that its PromQL stays reviewable in one place:
edit the panels below, run `python3 deploy/grafana/make_dashboard.py`, commit both
files. tests/test_deploy_metrics.py checks that the JSON is up to date, that every
query runs in a real Prometheus scraping a real daemon, and that every metric it
names is exported by nocpolicyd.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
RATE = "$__rate_interval"


class Layout:
    """Places panels left to right on Grafana's 24-column grid, rows top to bottom."""

    def __init__(self):
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        self.y += self.row_h
        self.x, self.row_h = 0, 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, "range": not instant}
    if instant:
        t["instant"] = True
        t["format"] = "table"
    return t


def panel(kind: str, title: str, targets: list[dict], description: str = "", unit: str = "short",
          **options) -> dict:
    p = {"type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}
    defaults = p["fieldConfig"]["defaults"]
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "stacking": {"mode": options.pop("stack", "none"), "group": "A"}}
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": "auto"}
    elif kind == "state-timeline":
        p["options"] = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8}
    if "thresholds" in options:
        steps = [{"color": "green", "value": None}]
        steps += [{"color": color, "value": v} for v, color in options.pop("thresholds")]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        defaults["color"] = {"mode": "thresholds"}
    if "mappings" in options:
        defaults["mappings"] = [{"type": "value", "options": options.pop("mappings")}]
    assert not options, f"unknown panel options {options}"
    return p


def build() -> dict:
    L = Layout()

    L.row("Overview")
    L.add(panel("stat", "Daemons up", [target(f'sum(up{{job="nocpolicy", {SEL}}})', "up")],
                "Instances Prometheus scrapes successfully (alert NocpolicyDaemonDown when one is not)."), 4, 4)
    L.add(panel("stat", "Components failed",
                [target(f"count(nocpolicy_component_up{{{SEL}}} == 0) or vector(0)", "failed")],
                "Components (dns, detect, qos, maintenance, mqtt) failed or stopped; `nocpolicyctl status`.",
                thresholds=[(1, "red")]), 4, 4)
    L.add(panel("stat", "Last reload refused",
                [target(f"max(nocpolicy_policy_last_reload_failed{{{SEL}}})", "refused")],
                "1: the last policy reload was refused and the previous policy is still in force.",
                thresholds=[(1, "orange")], mappings={"0": {"text": "no"}, "1": {"text": "REFUSED"}}), 4, 4)
    L.add(panel("stat", "Emergency",
                [target(f"max(nocpolicy_emergency_active{{{SEL}}}) or vector(0)", "emergency")],
                "Art. 23(1) emergency priority in force on any selected node.",
                thresholds=[(1, "red")], mappings={"0": {"text": "none"}, "1": {"text": "DECLARED"}}), 4, 4)
    L.add(panel("stat", "Opted-out customers", [target(f"sum(nocpolicy_optout_customers{{{SEL}}})", "opt-outs")],
                "Customers who chose no C&C blocking (Art. 45(4)); the mandatory list still applies."), 4, 4)
    L.add(panel("stat", "Suspended customers",
                [target(f"sum(nocpolicy_suspended_customers{{{SEL}}})", "suspended")],
                "Customers inside an active maintenance or fault window with an impact (Art. 24).",
                thresholds=[(1, "orange")]), 4, 4)
    L.add(panel("table", "Nodes: version and policy in force",
                [target(f"nocpolicy_build_info{{{SEL}}}", ref="A", instant=True),
                 target(f"nocpolicy_policy_info{{{SEL}}}", ref="B", instant=True),
                 target(f"time() - nocpolicy_policy_last_reload_success_timestamp_seconds{{{SEL}}}", ref="C",
                        instant=True)],
                "Build version, policy version (content hash) and seconds since the last successful load."),
          24, 6)

    L.row("DNS guard")
    L.add(panel("timeseries", "Queries per second by transport",
                [target(f"sum by (transport) (rate(nocpolicy_dns_queries_total{{{SEL}}}[{RATE}]))", "{{transport}}")],
                unit="reqps"), 8, 8)
    L.add(panel("timeseries", "Responses per second by rcode",
                [target(f"sum by (rcode) (rate(nocpolicy_dns_responses_total{{{SEL}}}[{RATE}]))", "{{rcode}}")],
                "SERVFAIL rising with upstream failures means customers see errors.", unit="reqps"), 8, 8)
    L.add(panel("timeseries", "Latency (answer path)",
                [target("histogram_quantile(0.5, sum by (le, path) (rate("
                        f"nocpolicy_dns_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p50 {{path}}", "A"),
                 target("histogram_quantile(0.99, sum by (le, path) (rate("
                        f"nocpolicy_dns_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p99 {{path}}", "B")],
                "path=local: blocked or answered by nocpolicy; path=forwarded: answered by an upstream.",
                unit="s"), 8, 8)
    L.add(panel("timeseries", "Blocks per second by list and class",
                [target(f"sum by (list, class) (rate(nocpolicy_dns_blocked_total{{{SEL}}}[{RATE}]))",
                        "{{class}} / {{list}}")],
                "mandatory (Art. 23(2), never lifted), security (C&C, opt-out), optional (opt-in).",
                unit="reqps", stack="normal"), 12, 8)
    L.add(panel("timeseries", "Detections per second by source and class",
                [target(f"sum by (source, class) (rate(nocpolicy_detections_total{{{SEL}}}[{RATE}]))",
                        "{{source}} / {{class}}")],
                "guard: answered by the DNS guard; dnstap, capture, logfile: passive detection.",
                unit="reqps"), 12, 8)
    L.add(panel("timeseries", "Upstream queries by result",
                [target("sum by (upstream, result) (rate("
                        f"nocpolicy_dns_upstream_queries_total{{{SEL}}}[{RATE}]))", "{{upstream}} {{result}}")],
                "ok/tcp_ok answered; timeout, error, tcp_error failed; truncated and retry are follow-ups.",
                unit="reqps"), 12, 8)
    L.add(panel("table", "Block lists: entries, age, refresh failures",
                [target(f"sum by (list) (nocpolicy_blocklist_entries{{{SEL}}})", ref="A", instant=True),
                 target(f"max by (list) (time() - nocpolicy_blocklist_last_success_timestamp_seconds{{{SEL}}})",
                        ref="B", instant=True),
                 target(f"sum by (list) (increase(nocpolicy_blocklist_refresh_failures_total{{{SEL}}}[1d]))",
                        ref="C", instant=True)],
                "Entries in force, seconds since the last good load/refresh, failed refreshes in 24 h."), 12, 8)
    L.add(panel("timeseries", "Opted-out customers",
                [target(f"sum(nocpolicy_optout_customers{{{SEL}}})", "opted out")]), 12, 6)
    L.add(panel("timeseries", "Malformed packets per second",
                [target(f"sum(rate(nocpolicy_dns_malformed_total{{{SEL}}}[{RATE}]))", "malformed")],
                unit="pps"), 12, 6)

    L.row("Passive detection (resolver logs, dnstap, capture)")
    L.add(panel("timeseries", "Lookups observed by source",
                [target(f"sum by (source) (rate(nocpolicy_detect_observed_total{{{SEL}}}[{RATE}]))", "{{source}}")],
                "Lookups passive detection judged; detections are in the DNS guard row.", unit="reqps"), 8, 7)
    L.add(panel("timeseries", "Active passive blocks",
                [target(f"sum by (kind) (nocpolicy_detect_active_blocks{{{SEL}}})", "{{kind}}")],
                "name: in the published RPZ; address: in the nftables set (entries expire)."), 8, 7)
    L.add(panel("timeseries", "Input health",
                [target(f"sum(nocpolicy_detect_dnstap_connections{{{SEL}}})", "dnstap connections", "A"),
                 target(f"sum by (source) (rate(nocpolicy_detect_input_errors_total{{{SEL}}}[{RATE}]))",
                        "input errors/s {{source}}", "B"),
                 target(f"sum(rate(nocpolicy_detect_capture_kernel_drops_total{{{SEL}}}[{RATE}]))",
                        "capture drops/s", "C"),
                 target(f"sum by (target) (rate(nocpolicy_detect_publish_failures_total{{{SEL}}}[{RATE}]))",
                        "publish failures/s {{target}}", "D")],
                "A resolver that stops sending dnstap shows as 0 connections."), 8, 7)

    L.row("Emergency priority and utilisation")
    L.add(panel("state-timeline", "Emergency state by profile",
                [target(f"max by (profile) (nocpolicy_emergency_active{{{SEL}}})", "{{profile}}")],
                thresholds=[(1, "red")], mappings={"0": {"text": "normal", "color": "green"},
                                                   "1": {"text": "EMERGENCY", "color": "red"}}), 24, 5)
    L.add(panel("timeseries", "Throughput per class",
                [target(f"sum by (interface, class) (rate(nocpolicy_class_bytes_total{{{SEL}}}[{RATE}])) * 8",
                        "{{interface}} {{class}}")],
                "Bits per second leaving each shaping class (from tc counters).", unit="bps"), 12, 8)
    L.add(panel("timeseries", "Drops per class",
                [target(f"sum by (interface, class) (rate(nocpolicy_class_drops_total{{{SEL}}}[{RATE}]))",
                        "{{interface}} {{class}}")], unit="pps"), 12, 8)
    L.add(panel("timeseries", "Customers over their cap",
                [target(f"sum(nocpolicy_customers_over_limit{{{SEL}}})", "over cap")]), 8, 7)
    L.add(panel("timeseries", "Enforcement apply time (p95)",
                [target("histogram_quantile(0.95, sum by (le) (rate("
                        f"nocpolicy_enforcement_apply_duration_seconds_bucket{{{SEL}}}[{RATE}])))", "p95")],
                "Time to apply and verify nft/tc rules (target: < 1 s on declare).", unit="s"), 8, 7)
    L.add(panel("timeseries", "Enforcement errors (per hour)",
                [target(f"sum by (backend) (increase(nocpolicy_enforcement_errors_total{{{SEL}}}[1h]))",
                        "{{backend}}")], thresholds=[(1, "red")]), 8, 7)

    L.row("Maintenance windows and notices (Art. 24)")
    L.add(panel("timeseries", "Windows by kind and state",
                [target(f"sum by (kind, state) (nocpolicy_maintenance_windows{{{SEL}}}) > 0",
                        "{{kind}} {{state}}")], stack="normal"), 8, 8)
    L.add(panel("timeseries", "Notices: pending and oldest age",
                [target(f"sum(nocpolicy_notices_pending{{{SEL}}})", "pending", "A"),
                 target(f"max(nocpolicy_notice_oldest_pending_seconds{{{SEL}}}) / 3600", "oldest (hours)", "B")],
                "Pending notices wait in the outbox until SMTP delivers them; alerts at 1 h and 12 h."), 8, 8)
    L.add(panel("timeseries", "Notice deliveries by kind and result (per hour)",
                [target(f"sum by (kind, result) (increase(nocpolicy_notices_total{{{SEL}}}[1h]))",
                        "{{kind}} {{result}}")]), 8, 8)

    L.row("Fleet and control plane")
    L.add(panel("timeseries", "Fleet nodes by state",
                [target(f"sum by (state) (nocpolicy_fleet_nodes{{{SEL}}})", "{{state}}")],
                "converged, pending, failed, offline (controller only).", stack="normal"), 8, 8)
    L.add(panel("timeseries", "Plan convergence time",
                [target("histogram_quantile(0.5, sum by (le) (rate("
                        f"nocpolicy_fleet_converge_seconds_bucket{{{SEL}}}[{RATE}])))", "p50", "A"),
                 target("histogram_quantile(0.99, sum by (le) (rate("
                        f"nocpolicy_fleet_converge_seconds_bucket{{{SEL}}}[{RATE}])))", "p99", "B")],
                "From publishing a plan version to each node's good acknowledgement.", unit="s"), 8, 8)
    L.add(panel("timeseries", "MQTT connection and events",
                [target(f"max(nocpolicy_mqtt_connected{{{SEL}}})", "connected", "A"),
                 target(f"sum(rate(nocpolicy_mqtt_events_dropped_total{{{SEL}}}[{RATE}]))", "events dropped/s", "B"),
                 target(f"sum(rate(nocpolicy_events_dropped_total{{{SEL}}}[{RATE}]))", "bus drops/s", "C")]),
          8, 8)

    return {
        "uid": "nocpolicy-overview",
        "title": "nocpolicy",
        "description": "DNS guard, emergency priority, maintenance notices and fleet (deploy/grafana).",
        "tags": ["nocpolicy"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [{
            "name": "Emergencies", "datasource": DS, "enable": True, "iconColor": "red",
            "expr": f"changes(max(nocpolicy_emergency_active{{{SEL}}})[2m:]) > 0",
            "step": "60s", "titleFormat": "emergency state changed"}]},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "options": []},
            {"name": "instance", "label": "Node", "type": "query", "datasource": DS,
             "query": "label_values(nocpolicy_build_info, instance)",
             "definition": "label_values(nocpolicy_build_info, instance)",
             "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1,
             "hide": 0, "options": []},
        ]},
        "panels": L.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    out = Path(__file__).with_name("nocpolicy-dashboard.json")
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
