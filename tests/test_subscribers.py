"""The subscribers area: the pure view builder, and runtime decisions pushed (never polled) to the
DNS engine, passive detection and every DNS worker process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import textwrap

import dns.edns
import dns.message
import dns.query
import pytest
from prometheus_client import CollectorRegistry

from dns_fixtures import Unbound, a_response, dns_policy
from helpers import DaemonProcess, wait_for
from nocpolicy.clock import ManualClock
from nocpolicy.component import Context
from nocpolicy.control.commands import CommandRegistry
from nocpolicy.detect.component import Detector
from nocpolicy.detect.observation import Observation
from nocpolicy.dns.component import DnsGuard
from nocpolicy.events import EventBus
from nocpolicy.options import Options
from nocpolicy.policy.customers import Customer
from nocpolicy.policy.diff import diff_policies
from nocpolicy.policy.load import load_policy
from nocpolicy.store import Store
from nocpolicy.subscribers.component import Subscribers
from nocpolicy.subscribers.model import Change, Decision, Decisions
from nocpolicy.subscribers.view import build_view, update_view

net = ipaddress.ip_network


# -- the pure builder -----------------------------------------------------------------------

CUSTOMERS = (
    Customer("a", "A", prefixes=(net("10.0.0.0/8"),), tags=("biz",), nodes=("n1",), plan="p1",
             optional_lists=("ads",)),
    Customer("b", "B", prefixes=(net("10.1.0.0/16"), net("2001:db8::/32")), security_optout=True),
)


def test_view_policy_values_runtime_decisions_and_longest_prefix():
    view = build_view(CUSTOMERS, "refuse", Decisions())
    a, b = view.get("a"), view.get("b")
    assert (a.plan, a.tags, a.nodes, a.optional, a.security) == ("p1", {"biz"}, {"n1"}, {"ads"}, True)
    assert (b.opted_out, b.optout_source) == (True, "policy")
    assert view.subscriber("10.1.2.3") is b                   # the longer prefix wins
    assert view.subscriber("10.2.0.1") is a
    assert view.subscriber("::ffff:10.1.0.1") is b            # IPv4-mapped, as a dual-stack socket reports
    assert view.subscriber("2001:db8::1") is b
    assert view.subscriber("192.0.2.1").refuse                # outside every prefix: unknown_clients
    assert view.optouts == {"b"}
    # a runtime decision overrides the policy, for that customer only; the rest is shared
    decided = update_view(view, view.decisions.with_(Decision("optout", "b", False)), ["b"])
    assert (decided.get("b").opted_out, decided.get("b").optout_source) == (False, "runtime")
    assert decided.get("a") is a and decided.prefixes is view.prefixes
    assert decided.optouts == frozenset() and view.optouts == {"b"}      # the old view is unchanged
    # a policy rebuild keeps the decision
    again = build_view(CUSTOMERS, "protect", decided.decisions)
    assert again.get("b").optout_source == "runtime" and not again.unknown.refuse


@pytest.mark.parametrize("doc, error", [
    ({"kind": "consent", "customer": "a", "value": True}, "unknown decision kind"),
    ({"kind": "optout", "customer": "", "value": True}, "customer must be"),
    ({"kind": "optout", "customer": "a", "value": "yes"}, "must be true or false"),
])
def test_decision_from_another_process_is_checked(doc, error):
    with pytest.raises(ValueError, match=error):
        Decision.from_json(doc)
    assert Decision.from_json({"kind": "optout", "customer": "a", "value": True}) == Decision("optout", "a", True)


# -- pushed in process: the engine and passive detection, with no time passing --------------

@pytest.fixture
async def area(tmp_path):
    pol = tmp_path / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "cc.txt").write_text("cc.example\n")
    (pol / "p.yaml").write_text(textwrap.dedent(f"""\
        customers:
          - {{id: a, name: A, prefixes: [192.0.2.0/26]}}
          - {{id: b, name: B, prefixes: [198.51.100.0/25]}}
        dns:
          lists:
            - {{id: cc, class: security, source: lists/cc.txt}}
        detect:
          logfiles: [{{path: {tmp_path}/none.log}}]
          enforce: [nft, events]
        """))
    policy = load_policy(pol)
    clock = ManualClock(dt.datetime(2026, 11, 25, 1, 0, tzinfo=dt.UTC))   # never advanced here
    store = Store(tmp_path / "state.db")
    ctx = Context(options=Options(state_dir=str(tmp_path / "state")), store=store, clock=clock,
                  events=EventBus(), registry=CollectorRegistry(), policy=lambda: policy,
                  secrets={"pseudonym": b"k" * 32})
    ctx.subscribers = Subscribers(ctx)
    guard, detector = DnsGuard(ctx), Detector(ctx)
    detector.guard.connect(guard)
    for c in (ctx.subscribers, guard, detector):
        (await c.prepare(policy, diff_policies(None, policy)))()
    reg = CommandRegistry()
    for c in (ctx.subscribers, guard, detector):
        for cmd in c.commands():
            reg.register(cmd)
    yield ctx, guard, detector, reg
    await detector.tasks.close()
    store.close()


async def test_optout_is_pushed_to_the_engine_and_detection_at_once(area):
    ctx, guard, detector, reg = area
    seen: list[Change] = []
    ctx.subscribers.watch(lambda view, change: seen.append(change))
    detector.pipeline.observe(Observation("dnstap", "192.0.2.10", "cc.example", 1, True, 1, 1,
                                          a_response("cc.example", 1, "203.0.113.5")))
    assert set(detector.blocks.addrs) == {("a", "203.0.113.5")}
    assert guard.judge("192.0.2.10", "cc.example").blocked
    detector._nft_full = False
    # the detector's tasks never ran (it is not started) and the clock stands still: only a
    # push can carry the decision
    out = await reg.dispatch("optout.set", {"customer": "a", "on": True, "reason": "phone"},
                             actor="test", source="test")
    assert out["changed"] and out["optout"] is True
    assert seen[-1] == Change(frozenset({"a"}), False)
    assert not guard.judge("192.0.2.10", "cc.example").blocked           # the very next query
    assert detector.blocks.addrs == {} and detector._nft_full            # its address blocks dropped
    assert ctx.store.one("SELECT COUNT(*) AS n FROM detect_blocks WHERE kind='addr'")["n"] == 0
    detector.pipeline.observe(Observation("dnstap", "192.0.2.11", "cc.example", 1, True, 2, 2,
                                          a_response("cc.example", 2, "203.0.113.6")))
    assert detector.blocks.addrs == {}                                   # no new detection either
    assert guard.judge("198.51.100.1", "cc.example").blocked              # b is still protected
    listed = await reg.dispatch("optout.list", {}, actor="test", source="test")
    row = next(r for r in listed["customers"] if r["customer"] == "a")
    assert (row["optout"], row["source"], row["reason"], row["actor"]) == (True, "runtime", "phone", "test")


async def test_decision_between_prepare_and_commit_is_kept(area):
    ctx, guard, detector, reg = area
    policy = ctx.policy()
    commit = await ctx.subscribers.prepare(policy, diff_policies(policy, policy))
    await reg.dispatch("optout.set", {"customer": "b", "on": True}, actor="test", source="test")
    commit()                                     # a reload prepared before the decision
    assert ctx.subscribers.view.get("b").opted_out
    assert not guard.judge("198.51.100.1", "cc.example").blocked


# -- pushed across processes: every DNS worker and passive detection in a real daemon --------

def ede_codes(d, name: str) -> list[int]:
    """The EDE codes of the answer to a query from a fresh socket (127.0.0.1 = customer c-home)."""
    r = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1", port=d.dns_port, timeout=3)
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def test_optout_at_the_admin_api_reaches_every_worker_and_detection(tmp_path):
    ub = Unbound(tmp_path, ["www.example.org. 300 IN A 192.0.2.80"]).start()
    pol = dns_policy(tmp_path, ub.port)
    log = tmp_path / "queries.log"
    log.write_text("")
    (pol / "detect.yaml").write_text(f"detect:\n  logfiles:\n    - {{path: {log}, format: unbound}}\n")
    d = DaemonProcess(tmp_path, policies=pol, extra_args=["--workers", "3"])
    try:
        d.start()

        def workers():
            return d.ctl_json("status")["components"]["dns"].get("workers", [])

        wait_for(lambda: len(workers()) == 2 and all(w["running"] for w in workers()), 60,
                 what="two worker processes")

        def blocked_everywhere(expect: bool) -> bool:
            # 48 fresh sockets: SO_REUSEPORT spreads them over the three processes
            return all((ede_codes(d, "www.bardubar.com") == [15]) is expect for _ in range(48))

        # a worker process runs before it listens: query until both workers have answered some
        wait_for(lambda: blocked_everywhere(True) and all(w["udp_queries"] for w in workers()), 60,
                 what="both workers answering")
        d.ctl("optout", "on", "c-home", check=True)
        assert blocked_everywhere(False)                 # every process, on the very next queries
        # passive detection: the opted-out client's lookup first, then a protected client's
        with open(log, "a") as f:
            f.write("[1764064800] unbound[1:0] info: 127.0.0.1 bardubar.com. A IN\n")
            f.write("[1764064800] unbound[1:0] info: 127.0.0.3 bardubar.com. A IN\n")
        wait_for(lambda: [r for r in d.ctl_json("detections", "--customer", "c-optin")["detections"]
                          if r["source"] == "logfile"], 30, what="the protected client's detection")
        rows = d.ctl_json("detections", "--customer", "c-home")["detections"]
        assert [r for r in rows if r["source"] == "logfile"] == []
        d.ctl("optout", "off", "c-home", check=True)
        assert blocked_everywhere(True)
        # a reload reaches the workers too (they run the daemon's own reload)
        with open(pol / "lists" / "mandatory.txt", "a") as f:
            f.write("reloaded.example\n")
        d.ctl("reload", check=True)
        wait_for(lambda: all(ede_codes(d, "reloaded.example") == [16] for _ in range(48)), 60,
                 what="every process blocking the reloaded list's new name")
        assert all(not w["restarts"] for w in workers())
    finally:
        d.stop()
        ub.stop()


async def test_analysis_consent_withdrawn_leaves_the_next_event_counts(area):
    """Art. 45(5): the blocks of a customer who withdrew consent to analysis are left out of
    the aggregated events (the analysis platform's feed) from the next batch on."""
    ctx, guard, detector, reg = area
    q = ctx.events.subscribe()

    def batch():
        return {("cc", "security", "nxdomain", cid, f"p-{cid}", "cc.example", "dns", "cc.example"): (0, 0, n, [])
                for cid, n in (("a", 2), ("b", 3))}

    def drained() -> list[dict]:
        out = []
        while not q.empty():
            ev = q.get_nowait()
            if ev.kind == "block":
                out.append(ev.payload)
        return out

    guard._publish_counts(batch())
    assert [e["count"] for e in drained()] == [5]
    await reg.dispatch("consent.set", {"customer": "a", "purpose": "analysis", "on": False}, actor="t", source="t")
    guard._publish_counts(batch())
    assert [e["count"] for e in drained()] == [3]
    await reg.dispatch("consent.set", {"customer": "a", "purpose": "analysis", "on": True}, actor="t", source="t")
    guard._publish_counts(batch())
    assert [e["count"] for e in drained()] == [5]
