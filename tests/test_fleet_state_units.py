"""Fleet state, the pure parts: the controller's streams, what an agent holds, the wire checks."""

from __future__ import annotations

import json

import pytest

from nocpolicy.fleet.statesync import Holder, Streams
from nocpolicy.fleet.statewire import (
    COMPACT_EVERY,
    FLEET,
    MAX_STATE_BYTES,
    RING,
    StateRefused,
    head,
    parse_state,
    stream_topics,
)

KINDS = ("optout", "lists")


def wire(out, node="edge-1"):
    """An Out as the agent receives it: (topic, parsed message)."""
    topic = stream_topics(out.kind, out.scope, out.slot)
    doc = {**head(out.kind, out.scope, out.version, "ctl", "t"), **out.body}
    return topic, parse_state(topic, json.dumps(doc).encode(), node, KINDS)


def test_increments_follow_each_other_and_a_snapshot_comes_every_compact_every():
    s = Streams()
    outs = s.snapshot_all("optout", {FLEET: {"c1": True}, "edge-1": {}}, 1)
    assert {(o.scope, o.slot) for o in outs} == {(FLEET, None), ("edge-1", None)}
    inc = s.patch("optout", [("c2", FLEET, True)], 2)
    assert [(o.slot, o.body) for o in inc] == [(0, {"base": 1, "set": {"c2": True}, "del": []})]
    assert s.patch("optout", [("c2", FLEET, True)], 3) == []          # no change, no message
    v, snaps = 2, 0
    for i in range(COMPACT_EVERY * 2):
        v += 1
        out = s.patch("optout", [(f"x{i}", FLEET, True)], v)
        snaps += sum(1 for o in out if o.slot is None)
        assert all(o.slot is None or o.slot == (i + 1) % RING for o in out)
    assert snaps == 2
    # a full recompute removes what is gone
    out = s.update("optout", {FLEET: {"c1": False}, "edge-1": {}}, v + 1)
    assert len(out) == 1 and out[0].body["set"] == {"c1": False} and "c2" in out[0].body["del"]


def test_agent_takes_versions_only_forward_and_waits_for_a_missing_increment():
    s, h = Streams(), Holder()
    msgs = [wire(o)[1] for o in s.snapshot_all("optout", {FLEET: {"c1": True}, "edge-1": {}}, 1)]
    incs = [wire(o)[1] for v in range(2, 6) for o in s.patch("optout", [(f"c{v}", FLEET, True)], v)]
    for m in msgs:
        h.take(m)
    assert h.effective("optout") == {"c1": True}
    assert h.take(incs[1]) is None                  # version 3 waits for 2
    step = h.take(incs[0])                          # 2 arrives: 2 and 3 applied, in order
    assert step.versions == (2, 3) and step.changes == {"c2": True, "c3": True}
    with pytest.raises(StateRefused) as e:
        h.take(incs[0])
    assert e.value.reason == "old"
    # the node's own stream overrides the fleet-wide one; withdrawing it falls back
    node = [wire(o)[1] for o in s.patch("optout", [("c1", "edge-1", False)], 6)]
    assert h.take(node[0]).changes == {"c1": False}
    node = [wire(o)[1] for o in s.patch("optout", [("c1", "edge-1", None)], 7)]
    assert h.take(node[0]).changes == {"c1": True}
    assert h.versions() == {"optout": {"fleet": 3, "node": 7}}


def test_saved_holder_resumes_where_it_was():
    s, h = Streams(), Holder()
    for o in s.snapshot_all("lists", {FLEET: {"l/a.example": True}}, 4):
        h.take(wire(o)[1])
    again = Holder({"lists/fleet": h.saved("lists", FLEET)})
    old = wire(s.snapshot_all("lists", {FLEET: {}}, 3)[0])[1]
    with pytest.raises(StateRefused):
        again.take(old)
    assert again.effective("lists") == {"l/a.example": True}


@pytest.mark.parametrize("topic,payload,reason", [
    ("nocpolicy/v1/fleet/optout/snap", b"{not json", "malformed"),
    ("nocpolicy/v1/fleet/optout/snap", b'{"version": 0}', "malformed"),
    ("nocpolicy/v1/fleet/optout/snap", b'{"version": 2, "kind": "lists", "scope": "fleet", "entries": {}}',
     "invalid"),
    ("nocpolicy/v1/nodes/edge-1/state/optout/snap",
     b'{"version": 2, "kind": "optout", "scope": "node", "node": "edge-2", "entries": {}}', "other_node"),
    ("nocpolicy/v1/nodes/edge-2/state/optout/snap", b"{}", "other_node"),
    ("nocpolicy/v1/fleet/optout/delta/3",
     b'{"version": 2, "base": 2, "kind": "optout", "scope": "fleet", "set": {}}', "malformed"),
    ("nocpolicy/v1/fleet/weather/snap", b"{}", "unknown_kind"),
    ("nocpolicy/v1/fleet/optout/snap", b" " * (MAX_STATE_BYTES + 1), "too_large"),
])
def test_bad_state_messages_are_refused_with_a_reason(topic, payload, reason):
    with pytest.raises(StateRefused) as e:
        parse_state(topic, payload, "edge-1", KINDS)
    assert e.value.reason == reason


def test_the_providers_have_every_member_of_the_fleet_state_interfaces():
    import inspect

    from nocpolicy.dns.component import DnsGuard
    from nocpolicy.interfaces import FleetDecisions, RuntimeLists
    from nocpolicy.subscribers.component import Subscribers
    for proto, provider in ((FleetDecisions, Subscribers), (RuntimeLists, DnsGuard)):
        for name, declared in vars(proto).items():
            if name.startswith("_") or not (callable(declared) or isinstance(declared, property)):
                continue
            if name == "view":          # an attribute of the instance
                assert "self.view" in inspect.getsource(provider.__init__)
                continue
            assert hasattr(provider, name), f"{provider.__name__} lacks {proto.__name__}.{name}"
            if inspect.iscoroutinefunction(declared):
                assert inspect.iscoroutinefunction(getattr(provider, name)), name


def test_a_controller_that_lost_its_versions_continues_above_what_the_agents_hold():
    import asyncio

    from nocpolicy.clock import SystemClock
    from nocpolicy.fleet.statectl import StatePublisher

    class Store(dict):
        def put(self, k, v):
            self[k] = dict(v)

    class Kind:
        async def current(self):
            return {FLEET: {"c1": True}}

    async def run():
        sent = []

        async def publish(topic, payload, retain=False):
            sent.append(json.loads(payload))
            return True
        pub = StatePublisher("ctl", kinds={"optout": Kind()}, store=Store(), clock=SystemClock(),
                             publish=publish, members=lambda: ["edge-1"])
        assert await pub.publish_kind("optout", whole=True) == 1
        ack = {"node": "edge-1", "held": {"optout": {"fleet": 57, "node": 3}}}
        pub.on_ack("nocpolicy/v1/nodes/edge-1/state/ack", json.dumps(ack).encode(), retained=True)
        assert pub.versions["optout"] == 57 and pub.store["mqtt.fleet.state"] == {"optout": 57}
        task = asyncio.create_task(pub.run())
        for _ in range(200):
            if any(d["version"] == 58 for d in sent):
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert {d["version"] for d in sent if d["version"] > 1} == {58}
    asyncio.run(run())


def test_consents_travel_by_purpose_and_cc_blocking_as_the_opt_out():
    """Fleet state carries consent decisions: cc-blocking as ``optout`` (its negation, the word
    operators and earlier agents use), every other purpose as ``consent-<purpose>``."""
    import asyncio
    from types import SimpleNamespace

    from nocpolicy.fleet.kinds import build_kinds
    from nocpolicy.subscribers.model import Decisions

    adopted = []

    class Source:
        view = SimpleNamespace(customers={}, decisions=Decisions({("consent:cc-blocking", "c1"): False,
                                                                  ("consent:analysis", "c2"): False}))

        def watch(self, fn):
            pass

        async def adopt(self, kind, values, *, actor, note):
            adopted.append((kind, values))

    kinds = build_kinds(Source(), None)
    assert set(kinds) == {"optout", "consent-analysis", "consent-isac-source", "consent-isac-probe", "suspension"}
    assert asyncio.run(kinds["optout"].current()) == {FLEET: {"c1": True}}
    assert asyncio.run(kinds["consent-analysis"].current()) == {FLEET: {"c2": False}}
    asyncio.run(kinds["optout"].apply({"c1": False, "c3": None}, actor="mqtt:ctl", note="v7"))
    asyncio.run(kinds["consent-isac-source"].apply({"c4": True}, actor="mqtt:ctl", note="v8"))
    assert adopted == [("consent:cc-blocking", {"c1": True, "c3": None}), ("consent:isac-source", {"c4": True})]
    assert "consent.set" in kinds["optout"].commands and "optout.set" in kinds["optout"].commands
