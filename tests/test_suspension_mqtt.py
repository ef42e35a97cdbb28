"""Suspension commands over a real mosquitto into a real nocpolicyd: authorised by identity,
audited with the MQTT identity, bad input answered naming the field."""

from __future__ import annotations

import pytest

from helpers import DaemonProcess, wait_for
from mosquitto_fixture import Mosquitto, Probe, fleet_acl
from test_mqtt_commands import NODE, USERS, command


@pytest.fixture
def env(tmp_path):
    broker = Mosquitto(tmp_path, USERS, fleet_acl(NODE, readers=["watcher"])).start()
    d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE) + ["--no-watch"]).start()
    probes = {u: Probe(broker, u).subscribe(f"nocpolicy/v1/reply/{u}/#") for u in ("noc-controller",
                                                                                  "customer-portal")}
    wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 30, what="daemon connected")
    yield broker, d, probes
    for p in probes.values():
        p.close()
    d.stop()
    broker.stop()


def test_suspend_and_resume_over_mqtt(env):
    broker, d, probes = env
    args = {"customer": "c1001", "cause": "nonpayment", "mode": "walled-garden", "reason": "invoice unpaid",
            "urgent": True, "justification": "fraud suspected"}
    r = command(broker, probes, "customer-portal", "suspension.suspend", args)
    assert r["status"] == 403                          # the portal may only set opt-outs
    r = command(broker, probes, "noc-controller", "suspension.suspend", {**args, "mode": "slow"})
    assert r["status"] == 400 and "mode" in r["error"]
    r = command(broker, probes, "noc-controller", "suspension.suspend", args)
    assert r["ok"] and r["result"]["suspension"]["state"] == "active", r
    r = command(broker, probes, "noc-controller", "suspension.list", {"terminable": True})
    assert [s["customer"] for s in r["result"]["suspensions"]] == ["c1001"]
    r = command(broker, probes, "noc-controller", "suspension.resume", {"customer": "c1001", "reason": "paid"})
    assert r["ok"] and r["result"]["event"] == "end"
    audit = d.ctl_json("audit", "--subject", "customer:c1001")["audit"]
    assert [(a["action"], a["actor"]) for a in audit if a["action"] != "suspension.terminable"] == [
        ("suspension.end", "mqtt:noc-controller"), ("suspension.add", "mqtt:noc-controller")]
