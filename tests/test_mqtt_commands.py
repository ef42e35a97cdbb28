"""Commands over a real mosquitto (password file + ACL) into a real nocpolicyd: by identity."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import uuid

import pytest

from helpers import DaemonProcess, wait_for
from mosquitto_fixture import Mosquitto, Probe, fleet_acl, make_pki

NODE = "edge-tokyo-1"           # settings.node of the example policy; the daemon's MQTT user name
USERS = {NODE: "node-pw", "noc-controller": "ctl-pw", "ti-feed": "feed-pw", "customer-portal": "portal-pw",
         "intruder": "intruder-pw", "watcher": "watch-pw"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mqtt-cmd")
    broker = Mosquitto(tmp, USERS, fleet_acl(NODE, readers=["watcher"])).start()
    # --no-watch: the tests edit the policy and reload explicitly, asserting changed=True; on a
    # busy machine the file watcher sometimes reloaded first.
    d = DaemonProcess(tmp, extra_args=broker.daemon_args(NODE) + ["--no-watch"]).start()
    probes = {u: Probe(broker, u).subscribe(f"nocpolicy/v1/reply/{u}/#")
              for u in ("noc-controller", "ti-feed", "customer-portal", "intruder")}
    watcher = Probe(broker, "watcher").subscribe("nocpolicy/v1/#")
    wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 30, what="daemon connected")
    yield broker, d, probes, watcher
    for p in [*probes.values(), watcher]:
        p.close()
    d.stop()
    broker.stop()


def command(broker, probes, user, verb, args=None, *, raw=None, rid=None, identity=None):
    """Publish with the real mosquitto_pub as ``user``; wait for the reply."""
    rid = rid or f"r-{uuid.uuid4().hex[:8]}"
    payload = raw if raw is not None else json.dumps({"request_id": rid, "args": args or {}})
    res = broker.pub(user, f"nocpolicy/v1/cmd/{identity or user}/{verb}", payload)
    assert res.returncode == 0, res.stderr
    return probes[user].wait(f"nocpolicy/v1/reply/{user}/{rid}", pred=lambda d: d["request_id"] == rid)


def test_status_is_retained_online_with_version_and_policy(env):
    broker, d, _, _ = env
    sub = broker.sub("watcher", f"nocpolicy/v1/nodes/{NODE}/status", count=1, timeout=5)
    out, err = sub.communicate(timeout=10)
    topic, _, body = out.strip().partition(" ")
    doc = json.loads(body)
    assert topic == f"nocpolicy/v1/nodes/{NODE}/status"
    st = d.ctl_json("status")
    assert doc["state"] == "online" and doc["version"] == st["daemon"]["version"]
    assert doc["policy"] == st["policy"]["version"] and doc["role"] == "standalone"


def test_granted_identity_runs_commands_and_is_audited(env):
    broker, d, probes, _ = env
    r = command(broker, probes, "noc-controller", "status")
    assert r["ok"] and r["status"] == 200 and r["result"]["daemon"]["node"] == NODE
    # a mutating command: policy changed on disk, reload over MQTT
    settings = d.policies / "settings.yaml"
    settings.write_text(settings.read_text().replace('provider: "Example Net KK / NOC"',
                                                     'provider: "Example Net KK / NOC east"'))
    r = command(broker, probes, "noc-controller", "reload")
    assert r["ok"] and r["result"]["changed"] is True, r
    audit = d.ctl_json("audit", "--limit", "20")["audit"]
    assert any(a["actor"] == "mqtt:noc-controller" and a["action"] == "policy.reload" for a in audit)
    assert any(a["actor"] == "mqtt:noc-controller" and a["action"] == "mqtt.command"
               and a["subject"] == "command:reload" for a in audit)


def test_a_repeated_request_id_is_answered_but_not_run_again(env):
    broker, d, probes, _ = env
    first = command(broker, probes, "noc-controller", "reload", rid="same-id-1")
    n = len(probes["noc-controller"].find("nocpolicy/v1/reply/noc-controller/same-id-1"))
    assert broker.pub("noc-controller", "nocpolicy/v1/cmd/noc-controller/reload",
                      json.dumps({"request_id": "same-id-1"})).returncode == 0
    wait_for(lambda: len(probes["noc-controller"].find("nocpolicy/v1/reply/noc-controller/same-id-1")) > n,
             10, what="second reply")
    assert probes["noc-controller"].find("nocpolicy/v1/reply/noc-controller/same-id-1")[-1] == first
    audit = d.ctl_json("audit", "--subject", "command:reload", "--limit", "100")["audit"]
    assert sum(a["after"]["request_id"] == "same-id-1" for a in audit) == 1


def test_grant_limits_verbs_per_identity(env):
    broker, d, probes, _ = env
    r = command(broker, probes, "ti-feed", "reload")
    assert not r["ok"] and r["status"] == 403 and "mqtt:ti-feed is not allowed to run reload" in r["error"]
    r = command(broker, probes, "intruder", "status")
    assert r["status"] == 403
    audit = d.ctl_json("audit", "--limit", "20")["audit"]
    assert any(a["actor"] == "mqtt:ti-feed" and a["action"] == "mqtt.refused" for a in audit)
    assert d.metric("nocpolicy_mqtt_commands_total", {"result": "refused"}) >= 2


def test_the_issue_verbs_by_identity(env):
    """opt-out (portal), list update (feed), maintenance add/cancel (NOC), each only by its grantee."""
    broker, d, probes, _ = env
    r = command(broker, probes, "customer-portal", "optout.set",
                {"customer": "c1001", "on": True, "reason": "customer request via portal"})
    assert r["ok"], r
    r = command(broker, probes, "ti-feed", "optout.set", {"customer": "c1002", "on": True})
    assert r["status"] == 403
    r = command(broker, probes, "customer-portal", "optout.set", {"customer": "c1001", "on": "yes"})
    assert r["status"] == 400 and r["field"] == "on"
    r = command(broker, probes, "ti-feed", "list.update", {"list": "cc-maltrail", "add": ["cc-fresh.example"]})
    assert r["ok"], r
    r = command(broker, probes, "noc-controller", "explain", {"client": "192.0.2.70", "name": "www.cc-fresh.example"})
    assert r["ok"] and "cc-maltrail" in json.dumps(r["result"]), r
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(days=40)).replace(microsecond=0)
    r = command(broker, probes, "noc-controller", "maintenance.add",
                {"kind": "planned", "start": start.isoformat(), "end": (start + dt.timedelta(hours=2)).isoformat(),
                 "reason": {"ja": "ルータ更新", "en": "router upgrade"}, "scope": {"customers": ["c1004"]}})
    assert r["ok"], r
    wid = r["result"].get("id") or r["result"]["window"]["id"]
    r = command(broker, probes, "noc-controller", "maintenance.cancel", {"id": wid, "reason": "postponed"})
    assert r["ok"], r
    audit = d.ctl_json("audit", "--limit", "100")["audit"]
    actors = {(a["actor"], a["action"]) for a in audit}
    assert ("mqtt:customer-portal", "mqtt.command") in actors
    assert any(a == "mqtt:customer-portal" and "optout" in act for a, act in actors), actors
    assert any(a == "mqtt:ti-feed" and "list" in act for a, act in actors), actors
    assert any(a == "mqtt:noc-controller" and "maintenance" in act for a, act in actors), actors


def test_identity_cannot_be_spoofed_through_the_topic(env):
    """ti-feed publishing under noc-controller's name is dropped by the broker ACL: no reply, no run."""
    broker, d, probes, watcher = env
    before = d.metric("nocpolicy_mqtt_commands_total", {"result": "ok"})
    spoof = f"spoof-{uuid.uuid4().hex[:6]}"
    res = broker.pub("ti-feed", "nocpolicy/v1/cmd/noc-controller/reload",
                     json.dumps({"request_id": spoof}))
    assert res.returncode == 0
    # a legitimate command published after the spoof attempt; the broker forwards in order,
    # so once its reply is here the spoofed one would have been answered before it
    r = command(broker, probes, "noc-controller", "status")
    assert r["ok"]
    assert watcher.find(f"nocpolicy/v1/reply/noc-controller/{spoof}") == []
    assert probes["noc-controller"].find(f"nocpolicy/v1/reply/noc-controller/{spoof}") == []
    assert d.metric("nocpolicy_mqtt_commands_total", {"result": "ok"}) == before + 1


def test_malformed_commands_get_clear_errors_and_the_daemon_keeps_serving(env):
    broker, d, probes, _ = env
    p = probes["noc-controller"]
    cases = [("status", "{not json", "not valid JSON"),
             ("status", '["a"]', "must be a JSON object"),
             ("status", '{"args": {}}', "request_id: required")]
    for verb, raw, why in cases:
        n = len(p.find("nocpolicy/v1/reply/noc-controller/-"))
        assert broker.pub("noc-controller", f"nocpolicy/v1/cmd/noc-controller/{verb}", raw).returncode == 0
        wait_for(lambda n=n: len(p.find("nocpolicy/v1/reply/noc-controller/-")) > n, 30, what=why)
        doc = p.find("nocpolicy/v1/reply/noc-controller/-")[-1]
        assert doc["status"] == 400 and why in doc["error"], doc
    r = command(broker, probes, "noc-controller", "status", raw='{"request_id": "bad-args", "args": 5}',
                rid="bad-args")
    assert r["status"] == 400 and "args: expected a JSON object" in r["error"]
    r = command(broker, probes, "noc-controller", "no.such.verb")
    assert r["status"] == 404 and "unknown command 'no.such.verb'" in r["error"]
    r = command(broker, probes, "noc-controller", "audit", {"limit": "many"})
    assert r["status"] == 400 and r.get("field") == "limit", r
    r = command(broker, probes, "noc-controller", "status", {"verbose": True})
    assert r["status"] == 400 and "verbose" in r["error"]
    assert d.proc.poll() is None
    assert command(broker, probes, "noc-controller", "status")["ok"]
    assert d.metric("nocpolicy_mqtt_commands_total", {"result": "invalid"}) >= 7


def test_events_out_on_reload(env):
    broker, d, probes, watcher = env
    settings = d.policies / "settings.yaml"
    settings.write_text(settings.read_text().replace("timezone: Asia/Tokyo", "timezone: Asia/Tokyo  # edited"))
    d.ctl("reload", check=True)
    version = d.ctl_json("status")["policy"]["version"]
    ev = watcher.wait("nocpolicy/v1/events/reload", pred=lambda e: e.get("version") == version)
    assert ev["ok"] is True and ev["node"] == NODE
    # the retained status follows the new policy hash
    watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s.get("policy") == version)


def test_graceful_stop_publishes_offline(tmp_path):
    broker = Mosquitto(tmp_path, USERS, fleet_acl(NODE, readers=["watcher"])).start()
    try:
        watcher = Probe(broker, "watcher").subscribe(f"nocpolicy/v1/nodes/{NODE}/status")
        d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE)).start()
        watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s["state"] == "online")
        assert d.stop() == 0
        doc = watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s["state"] == "offline")
        assert doc["reason"] == "stopped"
        (tmp_path / "again").mkdir()
        d2 = DaemonProcess(tmp_path / "again", extra_args=broker.daemon_args(NODE)).start()
        watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s["state"] == "online"
                     and s["at"] > doc["at"])
        d2.signal(signal.SIGKILL)
        d2.proc.wait()
        doc = watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s["state"] == "offline"
                           and s.get("reason") == "connection lost")
        watcher.close()
    finally:
        broker.stop()


def test_password_file_readable_by_others_is_refused(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    os.chmod(pw, 0o644)
    d = DaemonProcess(tmp_path, extra_args=["--mqtt", "mqtt://edge@127.0.0.1:1", "--mqtt-password-file", str(pw)])
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    assert f"--mqtt-password-file {pw} is readable or writable by group/others (mode 0644); run: chmod 600" in d.log()


def test_without_mqtt_the_component_is_disabled_and_up(daemon):
    d = daemon()
    st = d.ctl_json("status")["components"]["mqtt"]
    assert st["state"] == "disabled" and st["mqtt"] == {"enabled": False}
    assert d.metric("nocpolicy_component_up", {"component": "mqtt"}) == 1
    assert d.metric("nocpolicy_mqtt_connected") == 0
    out = d.ctl("fleet", "status")
    assert out.returncode == 0 and "MQTT off" in out.stdout


def test_mqtts_with_client_certificates_as_identities(tmp_path):
    """TLS: the certificate CN is the identity (use_identity_as_username); the same ACL and grants apply."""
    pki = make_pki(tmp_path / "pki", [NODE, "noc-controller", "ti-feed"])
    broker = Mosquitto(tmp_path, USERS, fleet_acl(NODE), pki=pki).start()
    d = DaemonProcess(tmp_path, extra_args=["--mqtt", f"mqtts://{NODE}@127.0.0.1:{broker.port}",
                                            "--mqtt-ca", str(pki / "ca.pem"), "--mqtt-cert", str(pki / f"{NODE}.pem"),
                                            "--mqtt-key", str(pki / f"{NODE}.key")]).start()
    probes = {}
    try:
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 30, what="TLS connection")
        probes = {u: Probe(broker, u).subscribe(f"nocpolicy/v1/reply/{u}/#") for u in ("noc-controller", "ti-feed")}
        probes["noc-controller"].publish("nocpolicy/v1/cmd/noc-controller/status", json.dumps({"request_id": "t1"}))
        r = probes["noc-controller"].wait("nocpolicy/v1/reply/noc-controller/t1")
        assert r["ok"] and r["result"]["components"]["mqtt"]["mqtt"]["broker"].startswith("mqtts://")
        probes["ti-feed"].publish("nocpolicy/v1/cmd/ti-feed/reload", json.dumps({"request_id": "t2"}))
        assert probes["ti-feed"].wait("nocpolicy/v1/reply/ti-feed/t2")["status"] == 403
    finally:
        for p in probes.values():
            p.close()
        d.stop()
        broker.stop()


def test_consent_over_mqtt_is_recorded_with_the_mqtt_channel(env):
    """Consent by purpose from the portal's MQTT identity: recorded as channel mqtt, audited,
    shown by consent.show; not granted to the feed."""
    broker, d, probes, _ = env
    r = command(broker, probes, "customer-portal", "consent.set",
                {"customer": "c1003", "purpose": "isac-probe", "on": True, "wording": "I agree (v2 text)",
                 "channel": "phone"})
    assert r["ok"] and r["result"]["channel"] == "mqtt" and r["result"]["changed"] is True, r
    r = command(broker, probes, "ti-feed", "consent.set", {"customer": "c1003", "purpose": "analysis", "on": False})
    assert r["status"] == 403
    r = command(broker, probes, "customer-portal", "consent.set",
                {"customer": "c1003", "purpose": "marketing", "on": True})
    assert r["status"] == 400 and r["field"] == "purpose"
    shown = {p["purpose"]: p for p in d.ctl_json("consent", "show", "c1003")["purposes"]}
    assert shown["isac-probe"]["on"] is True and shown["isac-probe"]["channel"] == "mqtt"
    assert shown["isac-probe"]["actor"] == "mqtt:customer-portal" and shown["analysis"]["on"] is True
    audit = d.ctl_json("audit", "--subject", "customer:c1003")["audit"]
    assert audit[0]["action"] == "consent.set" and audit[0]["after"]["wording"] == "I agree (v2 text)"


def test_advisory_import_over_mqtt_by_the_noc_only(env):
    """NICT advisories arrive over MQTT too (the NOC's identity); the feed may not import them."""
    broker, d, probes, _ = env
    text = ("advisory_id,source,address,port,time,service,finding\n"
            "M-1,notice,192.0.2.20,23,2026-07-03T10:00:00+09:00,telnet,weak-credentials\n")
    r = command(broker, probes, "noc-controller", "advisory.import", {"text": text, "source": "mqtt-feed.csv"})
    assert r["ok"] and r["result"]["new_cases"] == 1, r
    r = command(broker, probes, "ti-feed", "advisory.import", {"text": text})
    assert r["status"] == 403
    r = command(broker, probes, "noc-controller", "advisory.import", {"text": text.replace("+09:00", "")})
    assert r["status"] == 400 and "advisories:2: time:" in r["error"], r
    cases = d.ctl_json("advisories", "--customer", "c1001")["cases"]
    assert [(c["finding"], c["state"]) for c in cases] == [("weak-credentials", "open")]
