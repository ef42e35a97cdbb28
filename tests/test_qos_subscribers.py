"""qos plans from the subscriber view: live sessions and runtime decisions reach tc/nft.

Pure parts here (plan = f(policy, view), class ids stable across session churn, overlaps,
the rate-cap override, the class limit); the real daemon with RADIUS sessions and the kernel
in a namespace at the end.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import DaemonProcess, sh, wait_for
from nocpolicy.errors import EnforcementError
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.plan import (
    MAX_CAP_CLASSES,
    Emergency,
    build_plan,
    build_static,
)
from nocpolicy.qos.render import render_nft, render_tc
from nocpolicy.qos.subjects import Subject, net_text, subjects_of
from nocpolicy.sessions.model import net_of
from nocpolicy.subscribers.live import AddressTable, ClientLookup
from nocpolicy.subscribers.model import Decision, Decisions
from nocpolicy.subscribers.view import build_view, update_view
from test_qos_render import GOLDEN


@pytest.fixture(scope="module")
def policy():
    pol = load_policy(str(GOLDEN / "policy"))
    # c3: a home customer with no static prefix (its addresses come from sessions only)
    c3 = dataclasses.replace(pol.customers_by_id["c1"], id="c3", name="Dynamic three", prefixes=())
    return dataclasses.replace(pol, customers=(*pol.customers, c3))


def view_with(policy, sessions=()):
    """The subscribers area's view (the real builder) with live sessions in an AddressTable."""
    view = build_view(policy.customers, "protect", Decisions())
    live = AddressTable()
    for cid, prefixes in sessions:
        live.apply(("+", tuple(net_of(p) for p in prefixes), cid, cid not in policy.customers_by_id))
    return dataclasses.replace(view, prefixes=ClientLookup(view.prefixes, live))


def caps(plan) -> dict[str, str]:
    names = plan.names()
    return {e.prefix: names[e.minor] for e in plan.caps}


def test_without_sessions_the_view_plans_what_the_policy_does(policy):
    """The golden files are built from the policy alone; a view with no sessions and no
    decisions gives the very same rules."""
    base = load_policy(str(GOLDEN / "policy"))
    from_view = build_plan(base, subjects=subjects_of(base, view_with(base)))
    assert render_nft(from_view) == (GOLDEN / "normal.nft").read_text()
    assert render_tc(from_view) == (GOLDEN / "tree.tc").read_text()


def test_live_sessions_get_their_customers_caps(policy):
    view = view_with(policy, [("c3", ["100.64.0.7/32"]), ("c1", ["100.64.0.9/32"]),
                              ("walkin", ["100.64.0.20/32"])])
    plan = build_plan(policy, subjects=subjects_of(policy, view))
    got = caps(plan)
    assert got["100.64.0.7"] == "cap:c3" and got["100.64.0.9"] == "cap:c1"
    assert got["192.0.2.0/26"] == "cap:c1"                   # static prefixes as before
    assert "100.64.0.20" not in got                           # an implicit customer has no plan: no cap
    assert "100.64.0.7 : 1:" in render_nft(plan)
    # without the session, c3 has no address and so no class at all
    assert "cap:c3" not in {c.name for c in build_plan(policy).interfaces[0].classes}


def test_session_churn_keeps_every_other_class_id(policy):
    """A session starting or ending adds or removes one class; no other class is renumbered
    (renumbering would rewrite thousands of classes per RADIUS start)."""
    before = build_static(policy, subjects_of(policy, view_with(policy)))
    during = build_static(policy, subjects_of(policy, view_with(policy, [("c3", ["100.64.0.7"])])), before)
    after = build_static(policy, subjects_of(policy, view_with(policy)), during)
    assert {k: v for k, v in during.index.items() if k[0] != "c3"} == before.index
    assert after.index == before.index
    rates = lambda st: {c.minor: c.rate for c in st.trees[0].classes if c.minor in before.index.values()}  # noqa: E731
    assert rates(during) == rates(before), "a session must not move the other classes' guarantees"
    new = set(during.index.values()) - set(before.index.values())
    assert len(new) == 2 and min(new) > max(before.index.values())      # c3's normal and emergency caps


def test_overlapping_addresses_static_wins(policy):
    """nft interval maps refuse overlaps: a session address inside a static prefix (any
    customer's) or inside a wider live prefix is left out; the static owner keeps it."""
    view = view_with(policy, [("c3", ["192.0.2.5/32", "100.64.8.0/24"]), ("c1", ["100.64.8.9/32"])])
    plan = build_plan(policy, subjects=subjects_of(policy, view))
    got = caps(plan)
    assert "192.0.2.5" not in got and got["192.0.2.0/26"] == "cap:c1"
    assert got["100.64.8.0/24"] == "cap:c3" and "100.64.8.9" not in got


def test_emergency_priority_covers_live_addresses(policy):
    view = view_with(policy, [("fire", ["100.64.9.1/32"])])
    plan = build_plan(policy, Emergency("quake"), subjects=subjects_of(policy, view))
    assert {e.prefix for e in plan.emergency.priority} >= {"100.64.9.1", "198.51.100.128/26"}


def test_a_rate_cap_decision_overrides_the_plan(policy):
    """A runtime decision (e.g. a throttle suspension) caps every direction at its rate: the
    lower of it and the plan's cap applies, normal and emergency alike."""
    d = Decisions().with_(Decision("ratecap", "c2", 1_000_000))
    view = update_view(view_with(policy), d, ("c2",))
    plan = build_plan(policy, Emergency("quake"), subjects=subjects_of(policy, view))
    classes = {c.name: c for c in plan.interfaces[0].classes}
    assert classes["cap:c2"].ceil == 1_000_000                # biz has no normal cap below the link
    assert caps(plan)["192.0.2.64/26"] == "cap:c2"
    assert {e.prefix: e.minor for e in plan.emergency.caps}["192.0.2.64/26"] == classes["cap:c2"].minor
    loose = update_view(view, d.with_(Decision("ratecap", "c1", 40_000_000)), ("c1",))
    assert {c.name: c.ceil for c in build_plan(policy, subjects=subjects_of(policy, loose)).interfaces[0].classes}[
        "cap:c1"] == 5_000_000                                 # above the plan: the plan's cap stays
    with pytest.raises(ValueError, match="ratecap.*rate in bit/s|rate in bit/s"):
        Decision.from_json({"kind": "ratecap", "customer": "c1", "value": "fast"})


def test_the_class_limit_is_a_clear_refusal(policy):
    many = tuple(Subject(f"x{i:06d}", (f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",), "home")
                 for i in range(MAX_CAP_CLASSES // 2 + 1))       # two classes each (normal, emergency)
    with pytest.raises(EnforcementError, match=r"too many customer cap classes: 65280 needed, HTB allows 65279"):
        build_static(policy, many)
    assert len(build_static(policy, many[:-1]).index) == 65278


# -- the real daemon: RADIUS sessions reach nft, bursts coalesce ------------------------------


def caps4(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "nft", "list", "map", "inet", "nocpolicy", "caps4")


@pytest.mark.skipif(not __import__("shutil").which("radclient"), reason="radclient not installed")
def test_radius_sessions_reach_the_kernel_and_a_storm_coalesces(tmp_path, router):
    from helpers import free_port
    from sessions_fixtures import acct, radclient, sessions_policy
    port = free_port(kind=2)
    d = DaemonProcess(tmp_path, policies=sessions_policy(tmp_path, port),
                      extra_args=["--enforce", "linux", "--netns", router]).start()
    try:
        assert d.ctl_json("status")["components"]["qos"]["state"] == "running"
        run = radclient(port, acct("Start", "Q1", ip="100.64.3.7"))
        assert "Received Accounting-Response" in run.stdout, run.stdout + run.stderr
        wait_for(lambda: "100.64.3.7 counter" in caps4(router), 30, what="the session address in caps4")
        # a storm: 200 starts in parallel; the addresses all arrive, through few applies
        n = 200
        t0 = time.monotonic()
        before = d.ctl_json("status")["components"]["qos"]["rerenders"]["applied"]
        storm = "\n".join(acct("Start", f"S{i}", user="c1004@isp.example", ip=f"100.65.{i // 250}.{i % 250 + 1}")
                          for i in range(n))
        run = radclient(port, storm, retries=5, timeout=10)
        assert run.stdout.count("Received Accounting-Response") == n, run.stderr[-500:]
        wait_for(lambda: caps4(router).count("100.65.") == n, 60, what="every storm address in caps4")
        elapsed = time.monotonic() - t0
        applied = d.ctl_json("status")["components"]["qos"]["rerenders"]["applied"] - before
        assert 1 <= applied <= elapsed / 1.0 + 2, f"{applied} applies in {elapsed:.1f}s: not rate-bounded"
        assert applied < n / 4
        radclient(port, acct("Stop", "Q1", ip="100.64.3.7", Acct_Session_Time=60))
        wait_for(lambda: "100.64.3.7" not in caps4(router), 30, what="the stopped session out of caps4")
    finally:
        d.stop()


# -- the component: a re-render past the class limit keeps the plan in force ---------------------


async def test_a_rerender_past_the_class_limit_keeps_the_plan_in_force(tmp_path):
    from prometheus_client import CollectorRegistry

    from helpers import copy_policies
    from nocpolicy.clock import SystemClock
    from nocpolicy.component import Context
    from nocpolicy.events import EventBus
    from nocpolicy.options import Options
    from nocpolicy.policy.customers import Customer
    from nocpolicy.qos.component import Enforcer
    from nocpolicy.store import Store
    from nocpolicy.subscribers.model import EVERYTHING

    base = load_policy(copy_policies(tmp_path))
    extra = tuple(Customer(id=f"d{i:05d}", name=f"dynamic {i}", plan="home-100m") for i in range(MAX_CAP_CLASSES))
    policy = dataclasses.replace(base, customers=(*base.customers, *extra))
    store = Store(tmp_path / "state.db")
    ctx = Context(options=Options(policies=str(tmp_path / "policies"), state_dir=str(tmp_path), enforce="off"),
                  store=store, clock=SystemClock(), events=EventBus(), registry=CollectorRegistry(),
                  policy=lambda: policy)
    try:
        q = Enforcer(ctx)
        (await q.prepare(policy, None))()
        few = view_with(policy, [(f"d{i:05d}", [f"100.64.{i >> 8}.{i & 255}/32"]) for i in range(3)])
        q._view_changed(few, EVERYTHING)                  # what the subscribers area pushes
        assert await q.rerender() == "applied"
        good = q.plan
        assert sum(1 for c in good.interfaces[0].classes if c.name.startswith("cap:d")) == 3
        # every dynamic customer comes online: more cap classes than HTB has ids
        allof = view_with(policy, [(c.id, [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32"])
                                   for i, c in enumerate(extra)])
        q._view_changed(allof, EVERYTHING)
        assert await q.rerender() == "refused"
        assert q.plan is good, "the plan in force must stay"
        assert "too many customer cap classes" in q.last_error and q.rerenders["refused"] == 1
        assert q.status()["rerenders"]["refused"] == 1
        q._view_changed(few, EVERYTHING)                  # sessions end again: planning resumes
        assert await q.rerender() == "unchanged"
    finally:
        store.close()


@given(value=st.integers(0, (1 << 128) - 1), plen=st.sampled_from([128, 64, 56, 48]))
def test_live_ipv6_addresses_are_written_as_ipaddress_writes_them(value, plen):
    """Live addresses are formatted at every re-render (a million with a million sessions), with
    inet_ntop instead of ipaddress: the text in the plan must stay the same (RFC 5952)."""
    for v in (value, value & ((1 << 48) - 1), (0xFFFF << 32) | (value & 0xFFFFFFFF)):
        want = str(ipaddress.IPv6Address(v))
        assert net_text((6, v, plen)) == (want if plen == 128 else f"{want}/{plen}")
