"""Core metrics with a fresh registry (values read with get_sample_value)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from nocpolicy.component import Component, Context
from nocpolicy.control.metrics_http import metrics_handler
from nocpolicy.metrics import ComponentCollector, CoreMetrics
from nocpolicy.web.plain import Request


def test_policy_metrics_follow_loads_and_refusals():
    reg = CollectorRegistry()
    m = CoreMetrics(reg)
    get = reg.get_sample_value
    assert get("nocpolicy_policy_reloads_total", {"result": "success"}) == 0
    assert get("nocpolicy_policy_reloads_total", {"result": "failure"}) == 0
    assert get("nocpolicy_build_info", {"version": "0.1.0", "python": __import__("platform").python_version()}) == 1
    m.policy_loaded("aaa", 1000.0)
    m.policy_refused()
    assert get("nocpolicy_policy_last_reload_failed") == 1
    assert get("nocpolicy_policy_last_reload_success_timestamp_seconds") == 1000.0
    m.policy_loaded("bbb", 2000.0)
    assert get("nocpolicy_policy_info", {"version": "bbb"}) == 1
    assert get("nocpolicy_policy_info", {"version": "aaa"}) is None   # one series: the policy in force
    assert get("nocpolicy_policy_reloads_total", {"result": "success"}) == 2
    assert get("nocpolicy_policy_reloads_total", {"result": "failure"}) == 1
    assert get("nocpolicy_policy_last_reload_failed") == 0
    m.policy_refused()
    m.policy_unchanged(3000.0)
    assert get("nocpolicy_policy_last_reload_failed") == 0
    assert get("nocpolicy_policy_last_reload_success_timestamp_seconds") == 3000.0


def test_component_up_is_computed_at_scrape_time():
    reg = CollectorRegistry()
    ctx = Context(options=None, store=None, clock=None, events=None, registry=reg, policy=lambda: None)

    class A(Component):
        name = "alpha"

    a = A(ctx)
    reg.register(ComponentCollector(lambda: [a]))
    assert reg.get_sample_value("nocpolicy_component_up", {"component": "alpha"}) == 0
    a.set_state("running")
    assert reg.get_sample_value("nocpolicy_component_up", {"component": "alpha"}) == 1
    a.set_state("disabled", "not configured")
    assert reg.get_sample_value("nocpolicy_component_up", {"component": "alpha"}) == 1
    a.set_state("failed", "boom")
    assert reg.get_sample_value("nocpolicy_component_up", {"component": "alpha"}) == 0


async def test_endpoints():
    reg = CollectorRegistry()
    CoreMetrics(reg)
    state = {"ok": False}
    handle = metrics_handler(reg, lambda: (state["ok"], "components not up: dns"))

    def req(method, path):
        return Request(method, path, {}, {}, b"", "127.0.0.1:1")

    r = await handle(req("GET", "/metrics"))
    assert r.status == 200 and b"nocpolicy_policy_reloads_total" in r.body
    assert r.content_type.startswith("text/plain; version=0.0.4")
    assert (await handle(req("GET", "/healthz"))).status == 200
    r = await handle(req("GET", "/readyz"))
    assert r.status == 503 and r.body == b"not ready: components not up: dns\n"
    state["ok"] = True
    assert (await handle(req("GET", "/readyz"))).status == 200
    assert (await handle(req("POST", "/metrics"))).status == 405
    assert (await handle(req("GET", "/nope"))).status == 404
