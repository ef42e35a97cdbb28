"""Pure parts of the MQTT control plane: URL and password file, command payloads, plans, fleet states."""

from __future__ import annotations

import json
import os

import pytest

from nocpolicy.errors import NocpolicyError
from nocpolicy.fleet.broker import broker_config, parse_url, read_password_file
from nocpolicy.fleet.fleet import FleetTracker
from nocpolicy.fleet.outbox import DetectionCounts, Outbox, counts_only
from nocpolicy.fleet.plan import PlanInvalid, content_digest, parse_plan, plan_document
from nocpolicy.fleet.wire import NO_ID, BadRequest, node_of, parse_command
from nocpolicy.options import Options
from nocpolicy.policy.load import load_policy

CMD = "nocpolicy/v1/cmd/ti-feed/list.update"


def test_url_forms():
    assert parse_url("mqtt://noc@broker.example:1884") == ("broker.example", 1884, "noc", False)
    assert parse_url("mqtts://noc@127.0.0.1") == ("127.0.0.1", 8883, "noc", True)
    assert parse_url("mqtt://[::1]") == ("::1", 1883, None, False)
    for bad, why in (("http://h", "scheme"), ("mqtt://u:secret@h", "password in the URL"),
                     ("mqtt://h:99999", "out of range"), ("mqtt://h/x", "path")):
        with pytest.raises(NocpolicyError, match=why):
            parse_url(bad)


def test_password_file_must_be_private(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    os.chmod(f, 0o644)
    with pytest.raises(NocpolicyError, match=r"readable or writable by group/others \(mode 0644\); run: chmod 600"):
        read_password_file(str(f))
    os.chmod(f, 0o600)
    assert read_password_file(str(f)) == "s3cret"
    with pytest.raises(NocpolicyError, match="no such file|No such file"):
        read_password_file(str(tmp_path / "missing"))


def test_broker_config_from_options(tmp_path):
    assert broker_config(Options()) is None
    f = tmp_path / "pw"
    f.write_text("pw")
    os.chmod(f, 0o600)
    cfg = broker_config(Options(mqtt="mqtt://agent1@127.0.0.1:1999", mqtt_password_file=str(f)))
    assert (cfg.host, cfg.port, cfg.username, cfg.password, cfg.tls) == ("127.0.0.1", 1999, "agent1", "pw", False)
    assert "pw" not in cfg.url
    with pytest.raises(NocpolicyError, match="only used with mqtts"):
        broker_config(Options(mqtt="mqtt://a@h", mqtt_ca=str(f)))


def test_command_payloads():
    r = parse_command(CMD, b'{"request_id": "r-1", "args": {"list": "cc", "add": ["x.example"]}}')
    assert (r.identity, r.verb, r.request_id, r.args) == ("ti-feed", "list.update", "r-1",
                                                          {"list": "cc", "add": ["x.example"]})
    assert parse_command(CMD, b'{"request_id": "r-2"}').args == {}
    cases = [(b"{not json", NO_ID, "not valid JSON"),
             (b"[1, 2]", NO_ID, "must be a JSON object"),
             (b'{"args": {}}', NO_ID, "request_id: required"),
             (b'{"request_id": "a/b"}', NO_ID, "request_id"),
             (b'{"request_id": 7}', NO_ID, "got 7"),
             (b'{"request_id": "r-3", "args": [1]}', "r-3", "args: expected a JSON object, got list"),
             (b'{"request_id": "r-4", "argz": {}}', "r-4", "unknown key"),
             (b"\xff\xfe", NO_ID, "not valid JSON")]
    for payload, rid, why in cases:
        with pytest.raises(BadRequest, match=why) as ei:
            parse_command(CMD, payload)
        assert ei.value.request_id == rid and ei.value.identity == "ti-feed"


def test_plan_roundtrip_and_refusals():
    content = {"policy": "abc", "emergency": None, "enforcement": None}
    doc = plan_document(3, "edge-1", content, controller="noc", issued_at="t")
    assert parse_plan(json.dumps(doc).encode(), "edge-1")["version"] == 3
    with pytest.raises(PlanInvalid, match="plan is for 'edge-1', this node is 'edge-2'") as ei:
        parse_plan(json.dumps(doc).encode(), "edge-2")
    assert ei.value.version == 3
    for bad, why in ((b"x", "not valid JSON"), (b'{"version": 0, "node": "edge-1"}', "version"),
                     (b'{"version": true, "node": "edge-1"}', "version"),
                     (b'{"version": 2, "node": "edge-1", "enforcement": [1]}', "enforcement")):
        with pytest.raises(PlanInvalid, match=why):
            parse_plan(bad, "edge-1")
    assert content_digest({"a": content}) == content_digest({"a": dict(reversed(content.items()))})
    assert content_digest({"a": content}) != content_digest({"a": {**content, "policy": "def"}})


def test_fleet_states_and_histogram():
    t = FleetTracker()
    t.set_members(["a", "b", "c", "d"])
    assert t.counts() == {"converged": 0, "pending": 0, "failed": 0, "offline": 4}
    for n in "abcd":
        t.planned(n, 5, now=100.0)
    for n in "abc":
        t.on_status(n, {"state": "online", "version": "0.1"}, "w")
    t.on_ack("a", {"version": 5, "result": "applied"}, 100.4, "w", fresh=True)
    t.on_ack("b", {"version": 5, "result": "failed", "detail": "nft: boom"}, 100.5, "w", fresh=True)
    t.on_ack("c", {"version": 4, "result": "applied"}, 100.6, "w", fresh=True)   # older plan
    assert t.counts() == {"converged": 1, "pending": 1, "failed": 1, "offline": 1}
    assert t.converge.count == 1 and abs(t.converge.sum - 0.4) < 1e-9
    # a retained (old) ack of the current version converges the node but is not timed
    t.on_ack("c", {"version": 5, "result": "recorded"}, 101.0, "w", fresh=False)
    assert t.counts()["converged"] == 2 and t.converge.count == 1
    t.on_status("a", {"state": "offline"}, "w")
    assert t.counts() == {"converged": 1, "pending": 0, "failed": 1, "offline": 2}
    rows = {r["node"]: r for r in t.snapshot(now=103.0)}
    assert rows["b"]["detail"] == "nft: boom" and rows["b"]["lag_seconds"] == 3.0
    t.on_ack("zz", {"version": 5, "result": "applied"}, 101.0, "w", fresh=True)   # not a member
    t.set_members(["a"])
    assert list(t.nodes) == ["a"]
    samples = dict(t.converge.samples())
    assert samples["0.25"] == 0 and samples["0.5"] == 1 and samples["+Inf"] == 1


def test_detections_are_counts_only():
    d = DetectionCounts()
    d.add({"list": "cc", "class": "security", "client": "10.0.0.1", "name": "evil.example"}, "t0")
    d.add({"list": "cc", "class": "security", "count": 4}, "t1")
    d.add({"list": "csam", "class": "mandatory"}, "t2")
    d.add({"class": "security"}, "t3")     # no list: ignored
    doc = d.flush("t9", 60)
    assert doc["counts"] == [{"list": "cc", "class": "security", "count": 5},
                             {"list": "csam", "class": "mandatory", "count": 1}]
    assert doc["from"] == "t0" and doc["total"] == 6
    assert "10.0.0.1" not in json.dumps(doc) and "evil" not in json.dumps(doc)
    assert d.flush("t10", 60) is None


def test_aggregated_detections_leave_as_counts_only():
    ev = {"interval_s": 60, "total": 3, "clients": ["10.0.0.9"],
          "counts": [{"source": "dnstap", "list": "cc", "class": "security", "count": 3,
                      "client": "10.0.0.9", "name": "evil.example"}, "junk"]}
    out = counts_only(ev)
    assert out == {"counts": [{"list": "cc", "class": "security", "count": 3, "source": "dnstap"}],
                   "total": 3, "interval_s": 60}


def test_outbox_is_bounded():
    o = Outbox(maxlen=3)
    for i in range(5):
        o.put("t", str(i).encode())
    assert len(o) == 3 and o.dropped == 2 and o.peek() == ("t", b"2")


def test_grants_and_fleet_from_policy():
    p = load_policy("policies")
    c = p.control
    assert c.allows("noc-controller", "emergency.declare")
    assert c.allows("ti-feed", "list.update") and not c.allows("ti-feed", "optout.set")
    assert not c.allows("nobody", "status")
    assert c.fleet_nodes == ("edge-tokyo-1", "edge-tokyo-2")
    assert node_of("nocpolicy/v1/nodes/edge-tokyo-1/ack", "ack") == "edge-tokyo-1"
    assert node_of("nocpolicy/v1/nodes/edge-tokyo-1/ack", "status") is None


def test_a_grant_identity_may_not_be_a_node_name(policy_dir):
    from nocpolicy.errors import PolicyInvalid
    s = policy_dir / "settings.yaml"
    s.write_text(s.read_text().replace("identity: ti-feed", "identity: edge-tokyo-2"))
    with pytest.raises(PolicyInvalid, match=r"settings.yaml:\d+: control.grants\[1\].identity: 'edge-tokyo-2' "
                                            r"is also a node in control.groups"):
        load_policy(str(policy_dir))
