"""The Detector in-process with the real DNS guard (no sockets): one detection per lookup,
aggregated events, block expiry, opt-out dropping address blocks, RPZ files."""

from __future__ import annotations

import datetime as dt
import textwrap

import dnslib
import pytest
from prometheus_client import CollectorRegistry

from dns_fixtures import a_response
from nocpolicy.clock import ManualClock
from nocpolicy.component import Context
from nocpolicy.control.commands import CommandRegistry
from nocpolicy.detect.component import Detector
from nocpolicy.detect.observation import Observation
from nocpolicy.dns.component import DnsGuard
from nocpolicy.events import EventBus
from nocpolicy.options import Options
from nocpolicy.policy.diff import diff_policies
from nocpolicy.policy.load import load_policy
from nocpolicy.store import Store
from nocpolicy.subscribers.component import Subscribers
from nocpolicy.subscribers.model import Decision


@pytest.fixture
async def det(tmp_path):
    pol = tmp_path / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "m.txt").write_text("csam.example\n")
    (pol / "lists" / "cc.txt").write_text("cc.example\n")
    (pol / "lists" / "hosts.txt").write_text("0.0.0.0 tracker.example\n")
    (pol / "p.yaml").write_text(textwrap.dedent(f"""\
        customers:
          - {{id: a, name: A, prefixes: [192.0.2.0/26], optional_lists: [ads]}}
          - {{id: b, name: B, prefixes: [198.51.100.0/25]}}
        dns:
          lists:
            - {{id: m, class: mandatory, source: lists/m.txt}}
            - {{id: cc, class: security, source: lists/cc.txt}}
            - {{id: ads, class: optional, format: hosts, source: lists/hosts.txt}}
        detect:
          logfiles: [{{path: {tmp_path}/none.log}}]
          enforce: [rpz, events]
          block_for: 1h
          events_interval: 10s
          rpz: {{reload_zone: ["true"], reload_config: ["true"]}}
        """))
    policy = load_policy(pol)
    clock = ManualClock(dt.datetime(2026, 11, 25, 1, 0, tzinfo=dt.UTC))
    store = Store(tmp_path / "state.db")
    ctx = Context(options=Options(state_dir=str(tmp_path / "state")), store=store, clock=clock,
                  events=EventBus(), registry=CollectorRegistry(), policy=lambda: policy,
                  secrets={"pseudonym": b"k" * 32})
    ctx.subscribers = Subscribers(ctx)
    guard, detector = DnsGuard(ctx), Detector(ctx)
    detector.guard.connect(guard)
    ctx.components.update(dns=guard, detect=detector)
    change = diff_policies(None, policy)
    for c in (ctx.subscribers, guard, detector):
        (await c.prepare(policy, change))()
    events = ctx.events.subscribe()
    yield detector, guard, clock, events, tmp_path
    await detector.tasks.close()
    store.close()


async def test_one_detection_per_lookup_and_events(det):
    d, guard, clock, events, tmp = det
    q = Observation("capture", "192.0.2.10", "www.cc.example", 1, False, 5000, 77)
    r = Observation("capture", "192.0.2.10", "www.cc.example", 1, True, 5000, 77,
                    a_response("www.cc.example", 77, "203.0.113.5"))
    d.pipeline.observe_many([q, r, q])                  # a retransmitted query is the same lookup
    d.pipeline.observe(Observation("logfile", "198.51.100.9", "csam.example"))
    d.pipeline.observe(Observation("logfile", "198.51.100.9", "tracker.example"))   # b did not opt in
    d.pipeline.observe(Observation("logfile", "192.0.2.11", "tracker.example"))     # a did
    d.pipeline.observe(Observation("dnstap", "192.0.2.12", "example.org"))
    assert d.pipeline.detected == {("capture", "cc", "security"): 1, ("logfile", "m", "mandatory"): 1,
                                   ("logfile", "ads", "optional"): 1}
    assert d.pipeline.observed["capture"] == 3 and d.pipeline.observed["dnstap"] == 1
    rows = guard.detections.take()
    assert {(k[0], k[3], k[6]) for k in rows} == {("cc", "a", "capture"), ("m", "b", "logfile"),
                                                  ("ads", "a", "logfile")}
    # security and mandatory entries are published, the optional one is not
    assert set(d.blocks.names) == {("security", "cc.example"), ("mandatory", "csam.example")}

    d.housekeeping()
    ev = events.get_nowait()
    assert ev.kind == "detections" and ev.payload["total"] == 3
    assert {"source": "capture", "list": "cc", "class": "security", "count": 1} in ev.payload["counts"]
    assert "192.0.2.10" not in str(ev.payload) and "www.cc.example" not in str(ev.payload)
    d.housekeeping()
    assert events.empty()                               # nothing new: no event
    clock.advance(400)                                  # more than block_for/10: the longer life is saved
    d.pipeline.observe(Observation("logfile", "192.0.2.10", "cc.example"))
    d.housekeeping()
    assert events.get_nowait().payload["counts"] == [{"source": "logfile", "list": "cc",
                                                      "class": "security", "count": 1}]

    # RPZ files are written, and blocks expire block_for after the last lookup
    await d._start_inputs()
    await d.publish_now()
    rpzdir = tmp / "state" / "rpz"
    assert "cc.example CNAME ." in (rpzdir / "security.rpz").read_text()
    assert "csam.example CNAME ." in (rpzdir / "mandatory.rpz").read_text()
    assert 'access-control-tag: 192.0.2.0/26 "nocp_protected"' in (rpzdir / "unbound-acl.conf").read_text()
    assert d.rpz.reloads == 1 and d.rpz.writes == 3     # ACL changed: one reload_config
    clock.advance(3201)                                 # 1 h after the first lookups
    d.housekeeping()
    assert set(d.blocks.names) == {("security", "cc.example")}       # refreshed by the later lookup
    await d.publish_now()
    assert "csam.example" not in (rpzdir / "mandatory.rpz").read_text()
    assert d.ctx.store.one("SELECT COUNT(*) AS n FROM detect_blocks")["n"] == 1
    await d._stop_inputs()
    # a restart finds the active block with its extended life
    again = Detector(d.ctx)
    again._load_blocks()
    assert [(b.entry, b.expires) for b in again.blocks.names.values()] == \
        [("cc.example", d.blocks.names[("security", "cc.example")].expires)]


async def test_cname_chain_to_a_listed_name(det):
    d, guard, clock, events, tmp = det
    q = dnslib.DNSRecord.question("innocent.example", "A")
    q.header.id = 9
    r = q.reply()
    r.add_answer(dnslib.RR("innocent.example", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("edge.cdn.example"), ttl=60))
    r.add_answer(dnslib.RR("edge.cdn.example", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("Node.CC.example"), ttl=60))
    r.add_answer(dnslib.RR("node.cc.example", dnslib.QTYPE.A, rdata=dnslib.A("203.0.113.7"), ttl=60))
    wire = r.pack()
    query = Observation("dnstap", "192.0.2.10", "innocent.example", 1, False, 7, 9)
    resp = Observation("dnstap", "192.0.2.10", "innocent.example", 1, True, 7, 9, wire)
    d.pipeline.observe(query)
    assert d.pipeline.detected == {}                    # the query name itself is not listed
    d.pipeline.observe(resp)
    d.pipeline.observe(resp)                            # the same response again: still one detection
    assert d.pipeline.detected == {("dnstap", "cc", "security"): 1}
    (key, _), = guard.detections.take().items()
    assert (key[0], key[3], key[5]) == ("cc", "a", "node.cc.example")
    # customer b opts out (the real command): no detection through CNAMEs either
    reg = CommandRegistry()
    for cmd in (*d.ctx.subscribers.commands(), *guard.commands()):
        reg.register(cmd)
    await reg.dispatch("optout.set", {"customer": "b", "on": True}, actor="test", source="test")
    d.pipeline.observe(Observation("dnstap", "198.51.100.3", "innocent.example", 1, True, 8, 9, wire))
    assert d.pipeline.detected == {("dnstap", "cc", "security"): 1}
    d.pipeline.observe(Observation("dnstap", "192.0.2.10", "innocent.example", 1, True, 8, 10, wire))
    assert d.pipeline.detected == {("dnstap", "cc", "security"): 2}       # a still is protected


async def test_optout_drops_security_address_blocks(det):
    d, guard, clock, events, tmp = det
    d.settings = d.settings.__class__(**{**d.settings.__dict__, "enforce": ("nft",)})
    r = Observation("dnstap", "192.0.2.10", "cc.example", 1, True, 1, 1, a_response("cc.example", 1, "203.0.113.5",
                                                                                  "0.0.0.0"))
    d.pipeline.observe(r)
    r2 = Observation("dnstap", "192.0.2.10", "csam.example", 1, True, 1, 2, a_response("csam.example", 2,
                                                                                     "203.0.113.9"))
    d.pipeline.observe(r2)
    assert set(d.blocks.addrs) == {("a", "203.0.113.5"), ("a", "203.0.113.9")}     # never 0.0.0.0
    d.housekeeping()
    await d.ctx.subscribers.decide(Decision("optout", "a", True))     # pushed: no polling
    d.housekeeping()
    assert set(d.blocks.addrs) == {("a", "203.0.113.9")}     # mandatory stays
    assert d._nft_full
