"""qos skips the re-render of session changes that cannot alter the plan (qos/untouched.py).

The rule is checked against the real thing: random live session sets in a real LiveTable
(nested prefixes, addresses inside static prefixes, implicit and policy customers, runtime
rate caps, unattributed sessions), random batches of starts, stops and displacements, and
a full re-render before and after. Whenever the rule says "untouched", the full re-render
after the changes gives the very same plan (or, over the class limit, is refused again).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import copy_policies
from nocpolicy.policy.customers import Customer
from nocpolicy.policy.load import load_policy
from nocpolicy.qos import plan as plan_mod
from nocpolicy.qos.plan import (
    Emergency,
    TooManyClasses,
    build_plan,
    build_static,
    check_class_limit,
)
from nocpolicy.qos.subjects import kept_live, subjects_of
from nocpolicy.qos.untouched import OVER_LIMIT, PLANNED, plan_untouched, reaches_plan
from nocpolicy.sessions.model import net_of
from nocpolicy.sessions.table import LiveTable
from nocpolicy.subscribers.live import ClientLookup
from nocpolicy.subscribers.model import Decisions
from nocpolicy.subscribers.view import build_view, implicit_subscriber

# small spaces so that prefixes nest, collide and fall inside static prefixes
V4 = ["10.0.0.0/24", "10.0.0.0/28", "10.0.0.16/28", "10.0.0.4/30", "10.0.0.1/32", "10.0.0.2/32",
      "10.0.0.5/32", "10.0.0.17/32", "10.0.0.200/32", "192.0.2.10/32", "203.0.113.3/32"]
V6 = ["2001:db8:aa00::/56", "2001:db8:aa00::/64", "2001:db8:aa00:1::/64", "2001:db8:ab00::/56",
      "2001:db8:aa00::5/128", "2001:db8:1001:5::/64"]
CUSTOMERS = [None, "u1", "u2", "u3", "u4", "c1001", "c1004", "c2001", "c9001"]   # c2001: a priority role, no cap


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """The example policy (its emergency profile caps every customer: implicit ones get a
    class) and the same without that cap (implicit customers reach nothing)."""
    example = load_policy(copy_policies(tmp_path_factory.mktemp("untouched")))
    # c9001: a policy customer with no prefix of its own (present only while a session is live)
    capped = dataclasses.replace(example, customers=(*example.customers,
                                                     Customer(id="c9001", name="no prefix", plan="home-100m")))
    profiles = tuple(dataclasses.replace(p, customer_cap=None) for p in capped.profiles)
    plans = tuple(dataclasses.replace(p, down=None, emergency_down=None) for p in capped.plans)
    return {"implicit-capped": capped, "implicit-uncapped": dataclasses.replace(capped, profiles=profiles),
            "upload-caps-only": dataclasses.replace(capped, profiles=profiles, plans=plans)}


def make_view(policy, table, ratecaps: dict):
    decisions = Decisions()
    if ratecaps:
        decisions = decisions.changed("ratecap", ratecaps)
    view = build_view(policy.customers, "protect", decisions)
    by_id = dict(view.by_id)
    for cid in decisions.customers():
        by_id.setdefault(cid, implicit_subscriber(cid, decisions))
    return dataclasses.replace(view, by_id=by_id, prefixes=ClientLookup(view.prefixes, table))


class Sessions:
    """A live table changed the way the session book changes it, recording the changes the
    subscribers area hands qos: ``(op, addrs, customer, implicit)``."""

    def __init__(self, policy):
        self.table, self.policy, self.next, self.changes = LiveTable(), policy, 1, []

    def start(self, cid, prefixes):
        addrs = tuple(sorted({net_of(p) for p in prefixes}, key=lambda n: (n[0], n[1], n[2])))
        implicit = cid is not None and cid not in self.policy.customers_by_id
        _slot, displaced = self.table.put(self.next, "radius", "bng1/bng1", f"S{self.next}", cid, addrs,
                                          0.0, 0.0, 300.0, implicit)
        for old in displaced:
            self.changes.append(("-", old.addrs, old.customer, old.implicit))
        self.changes.append(("+", addrs, cid, implicit))
        self.next += 1

    def stop(self, k):
        live = self.table.sessions()
        if live:
            s = live[k % len(live)]
            self.table.remove(s)
            self.changes.append(("-", s.addrs, s.customer, s.implicit))


def full(policy, view, previous=None, uploads=False, emergency=False):
    """What a full re-render computes: the Static and the plan (during the example's
    emergency, or not), or TooManyClasses."""
    static = build_static(policy, subjects_of(policy, view), previous, redirect="matchall" if uploads else None)
    return static, build_plan(policy, Emergency("earthquake") if emergency else None, static=static)


session = st.tuples(st.sampled_from(CUSTOMERS),
                    st.lists(st.sampled_from(V4 + V6), min_size=1, max_size=2))
change = st.one_of(st.tuples(st.just("start"), session), st.tuples(st.just("stop"), st.integers(0, 50)))


def started(policy, items, ratecap):
    """Sessions started for (customer, prefixes) pairs, and the view the subscribers area pushes."""
    s = Sessions(policy)
    for cid, prefixes in items:
        s.start(cid, prefixes)
    return s, make_view(policy, s.table, ratecap)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["implicit-capped", "implicit-uncapped", "upload-caps-only"]), before=st.lists(session, max_size=8),
       batch=st.lists(change, min_size=1, max_size=5), limit=st.sampled_from([3, 6, 65279]),
       uploads=st.booleans(), ratecap=st.sampled_from([{}, {"u2": 5_000_000}]), emergency=st.booleans())
def test_an_untouched_plan_is_what_a_full_rerender_gives(policies, which, before, batch, limit, uploads, ratecap,
                                                         emergency):
    policy = policies[which]
    s, view = started(policy, before, ratecap)
    with mock.patch.object(plan_mod, "MAX_CAP_CLASSES", limit):
        try:
            static0, plan0 = full(policy, view, uploads=uploads, emergency=emergency)
            basis = PLANNED
        except TooManyClasses:
            basis = OVER_LIMIT
        s.changes = []
        for kind, arg in batch:
            s.start(*arg) if kind == "start" else s.stop(arg)
        view = make_view(policy, s.table, ratecap)      # what the subscribers area pushes
        untouched = plan_untouched(basis, policy, view, s.changes, s.table, uploads)
        event(f"{basis} untouched={untouched}")
        if not untouched:
            return
        if basis == OVER_LIMIT:
            with pytest.raises(TooManyClasses):
                full(policy, view, uploads=uploads)
        else:
            _static1, plan1 = full(policy, view, static0, uploads=uploads, emergency=emergency)
            assert plan1 == plan0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["implicit-capped", "implicit-uncapped", "upload-caps-only"]), sessions=st.lists(session, max_size=10),
       limit=st.integers(0, 14), uploads=st.booleans(), ratecap=st.sampled_from([{}, {"u2": 5_000_000}]))
def test_the_early_class_count_refuses_exactly_what_a_full_build_refuses(policies, which, sessions, limit, uploads,
                                                                        ratecap):
    """qos counts the cap classes before it formats a million addresses (check_class_limit):
    it must refuse exactly the session sets that build_static refuses, with the same message."""
    policy = policies[which]
    _s, view = started(policy, sessions, ratecap)
    with mock.patch.object(plan_mod, "MAX_CAP_CLASSES", limit):
        try:
            full(policy, view, uploads=uploads)
            want = None
        except TooManyClasses as exc:
            want = str(exc)
        try:
            check_class_limit(policy, view, kept_live(policy, view.live_addresses()), uploads)
            got = None
        except TooManyClasses as exc:
            got = str(exc)
    event(f"refused={want is not None}")
    assert got == want


def test_which_changes_are_untouched(policies):
    """The cases an operator meets: an implicit customer's session with no class of its own is
    skipped; one the emergency profile's customer_cap gives a class is not (nor is one of a
    policy customer with a plan, one with a runtime rate cap, or a prefix that holds another
    session's address); over the class limit, further starts are skipped and a stop is not."""
    plain, capped = policies["implicit-uncapped"], policies["implicit-capped"]
    s = Sessions(plain)
    s.start("c1001", ["10.0.0.5/32"])
    view = make_view(plain, s.table, {"u9": 5_000_000})
    assert not reaches_plan(plain, view, "u1", uploads=True)
    assert reaches_plan(capped, view, "u1", uploads=False)
    assert reaches_plan(plain, view, "c1001", uploads=False) and reaches_plan(plain, view, "u9", uploads=False)
    s.changes = []
    s.start("u1", ["10.0.0.1/32", "2001:db8:aa00::/56"])
    s.start(None, ["10.0.0.2/32"])
    assert plan_untouched(PLANNED, plain, view, s.changes, s.table, uploads=True)
    assert not plan_untouched(PLANNED, capped, view, s.changes, s.table, uploads=False)
    assert not plan_untouched(None, plain, view, s.changes, s.table, uploads=False)
    for cid in ("c1001", "u9"):
        assert not plan_untouched(PLANNED, plain, view, [("+", (net_of("10.0.0.200/32"),), cid, False)],
                                  s.table, uploads=False)
    s.changes = []
    s.start("u2", ["10.0.0.4/30"])                   # holds c1001's 10.0.0.5: shadows it
    assert not plan_untouched(PLANNED, plain, view, s.changes, s.table, uploads=False)
    s.changes = []
    s.start("u3", ["10.0.0.200/32"])
    assert plan_untouched(OVER_LIMIT, capped, view, s.changes, s.table, uploads=False)
    s.changes = []
    s.stop(0)
    assert not plan_untouched(OVER_LIMIT, capped, view, s.changes, s.table, uploads=False)


def test_nested_probes_each_length_in_use():
    t = LiveTable()
    t.put(1, "radius", "n", "a", "u1", (net_of("2001:db8:aa00:7::/64"),), 0.0, 0.0, 0.0, True)
    t.put(2, "radius", "n", "b", "u2", (net_of("10.1.0.0/16"),), 0.0, 0.0, 0.0, True)
    t.put(3, "radius", "n", "c", "u3", (net_of("2001:db8:bb00::/56"),), 0.0, 0.0, 0.0, True)
    six = lambda p: net_of(p)     # noqa: E731
    assert t.nested(*six("2001:db8:aa00::/56"))          # holds a live /64 (256 probes)
    assert not t.nested(*six("2001:db8:ab00::/56"))
    assert t.nested(*six("2001:db8:bb00:1::/64"))        # inside a live /56
    assert t.nested(*six("2001:db8:aa00:7::/64")) is False    # itself only
    assert t.nested(*six("2001:db8::/32"))               # 2^24 /56s: cannot tell cheaply, so "yes"
    assert t.nested(4, int(ipaddress.IPv4Address("10.1.2.3")), 32)
    assert not t.nested(4, int(ipaddress.IPv4Address("10.2.2.3")), 32)


async def test_the_rerender_loop_skips_what_cannot_alter_the_plan(tmp_path, policies):
    """The component end to end (plan-only, real clock): after the first re-render, an implicit
    customer's session that reaches no class is skipped (counted as untouched, the plan stays);
    a session of a customer with a capped plan is re-rendered into the plan."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from nocpolicy.clock import SystemClock
    from nocpolicy.component import Context
    from nocpolicy.events import EventBus
    from nocpolicy.options import Options
    from nocpolicy.qos.component import Enforcer
    from nocpolicy.store import Store
    from nocpolicy.subscribers.model import EVERYTHING, Change

    policy = policies["implicit-uncapped"]
    store = Store(tmp_path / "state.db")
    ctx = Context(options=Options(policies=str(tmp_path), state_dir=str(tmp_path), enforce="off",
                                  extra={"qos_rerender_interval": 0.05}),
                  store=store, clock=SystemClock(), events=EventBus(), registry=CollectorRegistry(),
                  policy=lambda: policy)
    q = Enforcer(ctx)
    s = Sessions(policy)
    loop = None

    async def until(what, cond, seconds=60.0):
        deadline = asyncio.get_running_loop().time() + seconds
        while not cond():
            assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}: {q.rerenders}"
            await asyncio.sleep(0.02)

    def push():
        changes, s.changes = tuple(s.changes), []
        q._view_changed(make_view(policy, s.table, {}), Change(frozenset(c[2] for c in changes if c[2]), True,
                                                               changes))
    try:
        (await q.prepare(policy, None))()
        q._view_changed(make_view(policy, s.table, {}), EVERYTHING)
        loop = asyncio.create_task(q._rerender_loop())
        await until("the first re-render", lambda: q.rerenders["unchanged"] + q.rerenders["applied"] == 1)
        first = q.plan
        s.start("u1", ["100.64.0.1/32", "2001:db8:aa00::/56"])
        push()
        await until("the skip", lambda: q.rerenders["untouched"] == 1)
        assert q.plan is first and q.rerenders["unchanged"] + q.rerenders["applied"] == 1
        s.start("c9001", ["100.64.0.2/32"])        # plan home-100m: a cap class
        push()
        await until("the re-render", lambda: q.rerenders["applied"] >= 1)
        assert "100.64.0.2" in {e.prefix for e in q.plan.caps}
        assert q.rerenders["untouched"] == 1
    finally:
        if loop is not None:
            loop.cancel()
        store.close()
