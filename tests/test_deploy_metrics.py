"""The Grafana dashboard and the alert rules against a real daemon and a real Prometheus.

One real nocpolicyd and one real Prometheus (Debian package) scraping it every second
with deploy/prometheus/rules loaded. Checks: Prometheus scrapes the daemon, every rule
evaluates without error, every dashboard query runs, and every metric the rules and
the dashboard name is exported by nocpolicyd -- seen on the running daemon's /metrics,
or (for metrics that exist only in some states: fleet controller, agent, opt-in
per-customer series) declared in daemon/nocpolicy/ with a metric constructor.
"""

from __future__ import annotations

import ast
import json
import re
import runpy
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
import yaml

from helpers import REPO, DaemonProcess, copy_policies, free_port, http_get, wait_for

DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "nocpolicy-dashboard.json"
RULES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
PACKAGE = REPO / "daemon" / "nocpolicy"

METRIC = re.compile(r"\bnocpolicy_[a-zA-Z0-9_:]+")


# -- what the rules and the dashboard query -------------------------------------------


def rule_exprs() -> list[str]:
    return [r["expr"] for p in RULES for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    d = dashboard()
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    out += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    for var in d["templating"]["list"]:
        q = var.get("query")
        if var["type"] == "query":
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def referenced() -> dict[str, set[str]]:
    """metric name -> where it is used ("rules", "dashboard")."""
    out: dict[str, set[str]] = {}
    for where, exprs in (("rules", rule_exprs()), ("dashboard", dashboard_exprs())):
        for e in exprs:
            for name in METRIC.findall(e):
                out.setdefault(name, set()).add(where)
    return out


# -- what the daemon exports ------------------------------------------------------------

COUNTERS = {"Counter", "CounterMetricFamily"}
GAUGES = {"Gauge", "GaugeMetricFamily"}
HISTOGRAMS = {"Histogram", "HistogramMetricFamily"}
SUMMARIES = {"Summary", "SummaryMetricFamily"}
INFOS = {"Info", "InfoMetricFamily"}


def sample_names(ctor: str, name: str) -> set[str]:
    """The sample names a metric declared as ctor(name, ...) puts into the exposition.

    Counters: prometheus_client strips a trailing _total from the family name and adds
    it to the sample (the daemon disables _created). Histograms: _bucket, _sum, _count.
    """
    if ctor in COUNTERS:
        return {name.removesuffix("_total") + "_total"}
    if ctor in GAUGES:
        return {name}
    if ctor in HISTOGRAMS:
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if ctor in SUMMARIES:
        return {name, f"{name}_sum", f"{name}_count"}
    if ctor in INFOS:
        return {name.removesuffix("_info") + "_info"}
    return set()


def declared_in_code() -> dict[str, str]:
    """sample name -> file that declares it, from every metric constructor call in the package."""
    out: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(), str(path))
        except SyntaxError:
            continue  # someone is mid-edit; their own tests will say so
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and first.value.startswith("nocpolicy_")):
                continue
            func = node.func
            ctor = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            for s in sample_names(ctor, first.value):
                out.setdefault(s, str(path.relative_to(REPO)))
    return out


def exposed(metrics_text: str) -> set[str]:
    names = set()
    for line in metrics_text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_sample_name_rules():
    assert sample_names("CounterMetricFamily", "nocpolicy_dns_queries") == {"nocpolicy_dns_queries_total"}
    assert sample_names("Counter", "nocpolicy_x_total") == {"nocpolicy_x_total"}
    assert sample_names("HistogramMetricFamily", "nocpolicy_h_seconds") == {
        "nocpolicy_h_seconds_bucket", "nocpolicy_h_seconds_sum", "nocpolicy_h_seconds_count"}
    assert sample_names("GaugeMetricFamily", "nocpolicy_notices_total") == {"nocpolicy_notices_total"}
    assert sample_names("print", "nocpolicy_x") == set()


# -- a real daemon and a real Prometheus ---------------------------------------------------


class Prometheus:
    def __init__(self, workdir: Path, target: str):
        self.port = free_port()
        self.workdir = workdir
        # The shipped host configuration, with only the intervals, the rule paths and the
        # target address changed for the test.
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config.pop("alerting")   # never notify whatever else listens on 127.0.0.1:9093 here
        config["rule_files"] = [str(DEPLOY / "prometheus" / r) for r in config["rule_files"]]
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "nocpolicy")
        assert job["static_configs"][0]["targets"] == ["127.0.0.1:9753"]
        job["static_configs"][0]["targets"] = [target]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url, timeout=10)
        out = json.loads(body)
        out["http_status"] = status
        return out

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; tests/run-all.sh)")
    work = tmp_path_factory.mktemp("metrics")
    pol = copy_policies(work)
    # the example falls back to /etc/resolv.conf's resolver: keep test traffic on loopback
    dead = free_port()
    (pol / "dns.yaml").write_text((pol / "dns.yaml").read_text().replace(
        "address: system", f"address: 127.0.0.1:{dead}"))
    d = DaemonProcess(work, policies=pol).start()
    # Traffic, so that per-list, per-upstream and latency series exist: a blocked name
    # (mandatory list) and a forwarded one (the example upstreams may not answer here:
    # a timeout is a result too).
    for name in ("mandatory-blocked.invalid", "example.org"):
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=d.dns_port, timeout=5)
        except (dns.exception.Timeout, OSError):
            pass
    wait_for(lambda: d.metric("nocpolicy_dns_blocked_total") is not None
             and d.metric("nocpolicy_dns_upstream_queries_total") is not None, 15,
             what="blocked and upstream series after two queries")
    prom = Prometheus(work, f"127.0.0.1:{d.metrics_port}")
    try:
        def scraped():
            if prom.proc.poll() is not None:
                raise AssertionError((work / "prometheus.log").read_text(errors="replace"))
            r = prom.query('up{job="nocpolicy"}')["data"]["result"]
            return r and r[0]["value"][1] == "1"
        wait_for(scraped, 30, interval=0.2, what="Prometheus scraping nocpolicyd")

        def rates_defined():  # rate() needs at least two samples in its window
            r = prom.query('count_over_time(up{job="nocpolicy"}[1m]) >= 3')["data"]["result"]
            return bool(r)
        wait_for(rates_defined, 30, interval=0.2, what="three scrapes")
        yield d, prom
    finally:
        prom.stop()
        d.stop()


def test_prometheus_scrapes_the_daemon(stack):
    d, prom = stack
    res = prom.query('nocpolicy_component_up{job="nocpolicy"}')["data"]["result"]
    assert {r["metric"]["component"] for r in res} >= {"dns", "qos", "maintenance"}
    alerts = prom.api("alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["labels"]["alertname"] in ("NocpolicyDaemonDown", "NocpolicyComponentDown")]


def test_every_rule_evaluates_without_error(stack):
    d, prom = stack

    def evaluated():
        groups = prom.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None
    rules = wait_for(evaluated, 20, interval=0.2, what="every rule evaluated once")
    assert len(rules) == len(rule_exprs())
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad


def test_every_dashboard_query_runs(stack):
    d, prom = stack
    errors = {}
    for expr in dashboard_exprs():
        q = expr.replace("$__rate_interval", "1m").replace('"$instance"', '".*"')
        if q.startswith("label_values("):
            m = re.fullmatch(r"label_values\((\w+), (\w+)\)", q)
            res = prom.api("series", **{"match[]": m.group(1)})
            if res.get("status") != "success":
                errors[expr] = res
            continue
        assert "$" not in q, f"unsubstituted variable in {expr}"
        res = prom.query(q)
        if res.get("status") != "success":
            errors[expr] = res.get("error")
            continue
        # Labels the panel groups by must exist on the daemon's series (legends use them).
        grouped = re.search(r"\bby \(([^)]*)\)", q)
        if grouped:
            want = {lb.strip() for lb in grouped.group(1).split(",")} - {"le", "instance", ""}
            for series in res["data"]["result"]:
                if not want <= set(series["metric"]):
                    errors[expr] = f"result lacks label(s) {sorted(want - set(series['metric']))}: {series}"
    assert not errors, errors


def test_every_metric_queried_is_exported_by_the_daemon(stack):
    d, prom = stack
    live = exposed(d.metrics())
    code = declared_in_code()
    refs = referenced()
    assert len(refs) > 20
    missing = {name: sorted(where) for name, where in sorted(refs.items()) if name not in live and name not in code}
    assert not missing, ("metrics the rules/dashboard query but nocpolicyd neither exposes nor declares: "
                         + json.dumps(missing, indent=1))


def test_dashboard_is_generated_from_make_dashboard():
    script = DEPLOY / "grafana" / "make_dashboard.py"
    render = runpy.run_path(str(script))["render"]
    assert DASHBOARD.read_text() == render(), "run: python3 deploy/grafana/make_dashboard.py"


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] and d["title"]
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[:2] == ["datasource", "instance"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in d["panels"]}
    for must in ("Queries per second by transport", "Latency (answer path)", "Blocks per second by list and class",
                 "Opted-out customers", "Emergency state by profile", "Throughput per class",
                 "Windows by kind and state", "Notices: pending and oldest age", "Fleet nodes by state"):
        assert must in titles
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
            assert 'instance=~"$instance"' in t["expr"] or "nocpolicy_" not in t["expr"], t["expr"]
