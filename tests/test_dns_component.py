"""DnsGuard in process: the API passive detection uses, block events for MQTT, a list swap on reload."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.edns
import dns.message
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import free_port
from nocpolicy.clock import SystemClock
from nocpolicy.component import Context
from nocpolicy.control.commands import CommandRegistry
from nocpolicy.dns.component import DnsGuard
from nocpolicy.events import EventBus
from nocpolicy.options import Options
from nocpolicy.policy.diff import diff_policies
from nocpolicy.policy.load import load_policy
from nocpolicy.store import Store
from nocpolicy.subscribers.component import Subscribers


@pytest.fixture
async def guard(tmp_path):
    ub = Unbound(tmp_path, ["www.example.org. 300 IN A 192.0.2.80"]).start()
    pol = dns_policy(tmp_path, ub.port)
    store = Store(tmp_path / "db.sqlite")
    from prometheus_client import CollectorRegistry
    holder = {}
    ctx = Context(options=Options(policies=str(pol), state_dir=str(tmp_path / "state"),
                                  dns_listen=[("127.0.0.1", free_port())]),
                  store=store, clock=SystemClock(), events=EventBus(), registry=CollectorRegistry(),
                  policy=lambda: holder["p"], secrets={"pseudonym": b"s" * 32})
    ctx.subscribers = Subscribers(ctx)
    g = DnsGuard(ctx)
    policy = load_policy(str(pol))
    for c in (ctx.subscribers, g):
        (await c.prepare(policy, diff_policies(None, policy)))()
    holder["p"] = policy
    await g.start()
    g.test_policy_dir, g.test_holder = pol, holder
    yield g
    await g.stop()
    store.close()
    ub.stop()


async def test_judge_and_record_detection_api(guard):
    v = guard.judge("127.0.0.1", "WWW.Bardubar.COM.")
    assert (v.blocked, v.customer, v.list, v.cls, v.ede) == (True, "c-home", "cc", "security", 15)
    assert not guard.judge("127.0.0.2", "www.bardubar.com").blocked          # opted out in the policy
    assert guard.judge("127.0.0.2", "csam.example").list == "csam"
    assert guard.judge("10.9.9.9", "www.bardubar.com").customer is None      # unknown: protect
    guard.record_detection(v, "127.0.0.1", "www.bardubar.com", source="dnstap")
    reg = CommandRegistry()
    for cmd in guard.commands():
        reg.register(cmd)
    out = await reg.dispatch("detections", {"customer": "c-home"}, actor="test", source="internal")
    assert [r["source"] for r in out["detections"]] == ["dnstap"]
    out = await reg.dispatch("explain", {"client": "127.0.0.1", "name": "www.bardubar.com"},
                             actor="test", source="internal")
    assert out["verdict"]["list"] == "cc" and out["matches"][0]["entry"] == "bardubar.com"


async def test_blocks_published_as_counts_for_mqtt(guard):
    q = guard.ctx.events.subscribe()
    port = guard.ctx.options.dns_listen[0][1]
    for _ in range(3):
        await dns.asyncquery.udp(dns.message.make_query("csam.example", "A"), "127.0.0.1", port=port, timeout=2)
    ev = await asyncio.wait_for(q.get(), 5)
    assert ev.kind == "block"
    assert ev.payload == {"list": "csam", "class": "mandatory", "count": 3, "source": "dns"}


async def test_list_change_swaps_without_pausing(guard):
    port = guard.ctx.options.dns_listen[0][1]
    pol = guard.test_policy_dir
    (pol / "lists" / "mandatory.txt").write_text("csam.example\nnew-entry.example\n")
    new = load_policy(str(pol))
    old_index = guard.lists.compiled["csam"].index
    cc_index = guard.lists.compiled["cc"].index
    (await guard.prepare(new, diff_policies(guard.test_holder["p"], new)))()
    guard.test_holder["p"] = new
    r = await dns.asyncquery.udp(dns.message.make_query("new-entry.example", "A"), "127.0.0.1", port=port, timeout=2)
    assert r.rcode() == 3
    assert guard.lists.compiled["csam"].index is not old_index
    for _ in range(100):                      # the replaced index is emptied in the background
        if len(old_index) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(old_index) == 0
    assert guard.lists.compiled["cc"].index is cc_index          # an unchanged list is not rebuilt


async def test_answers_judged_under_old_lists_are_released_after_a_swap(guard):
    port = guard.ctx.options.dns_listen[0][1]
    for name in ("csam.example", "www.csam.example"):           # blocked answers now cached per customer
        r = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5)
        assert r.rcode() == 3
    old_tables = guard._judged()
    assert sum(map(len, old_tables)) >= 2
    pol = guard.test_policy_dir
    (pol / "lists" / "mandatory.txt").write_text("other.example\n")   # csam.example no longer listed
    new = load_policy(str(pol))
    (await guard.prepare(new, diff_policies(guard.test_holder["p"], new)))()
    guard.test_holder["p"] = new
    for _ in range(3000):                  # emptied by a background task, a slice at a time (<= ~30 s)
        if not any(old_tables):
            break
        await asyncio.sleep(0.01)
    assert not any(old_tables)
    assert all(t is not o for t in guard._judged() for o in old_tables)
    assert guard.judge("127.0.0.1", "csam.example").action == "allow"
    q = dns.message.make_query("csam.example", "A", use_edns=0)
    r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=5)
    assert not {15, 16, 17} & {o.code for o in r.options if isinstance(o, dns.edns.EDEOption)}  # not the old block
