"""Broker outages: DNS and the admin API keep answering, events wait (bounded), the daemon reconnects."""

from __future__ import annotations

import json

import dns.message
import dns.query
import dns.rcode

from helpers import DaemonProcess, wait_for
from mosquitto_fixture import Mosquitto, Probe, fleet_acl

NODE = "edge-tokyo-1"
USERS = {NODE: "node-pw", "noc-controller": "ctl-pw", "watcher": "watch-pw"}


def dns_answers(d: DaemonProcess) -> bool:
    """The DNS guard answers a name on the mandatory list locally (no upstream needed)."""
    q = dns.message.make_query("mandatory-blocked.invalid", "A")
    r = dns.query.udp(q, "127.0.0.1", port=d.dns_port, timeout=2)
    return r.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.REFUSED, dns.rcode.NOERROR)


def test_broker_restart_during_a_run(tmp_path):
    broker = Mosquitto(tmp_path, USERS, fleet_acl(NODE, readers=["watcher"])).start()
    # --no-watch: the policy edit below is reloaded explicitly (changed=True); on a busy machine
    # the file watcher sometimes reloaded first.
    d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE) + ["--no-watch"]).start()
    watcher = None
    try:
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 30, what="connected")
        # subscribed before the outage, in a session the broker keeps: what the daemon sends once
        # it is back is queued for the watcher, whichever of the two reconnects first
        watcher = Probe(broker, "watcher", persistent=True).subscribe("nocpolicy/v1/#")
        broker.stop()
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 0, 30, what="disconnect noticed")
        # the outage changes nothing else: DNS answers, the admin API works, the daemon is ready
        assert dns_answers(d)
        st = d.ctl_json("status")
        assert st["components"]["mqtt"]["state"] == "running"
        assert "NOT connected" in st["components"]["mqtt"]["detail"]
        assert d.metric("nocpolicy_component_up", {"component": "mqtt"}) == 1
        # an event produced during the outage waits in the outbox
        settings = d.policies / "settings.yaml"
        settings.write_text(settings.read_text().replace("timezone: Asia/Tokyo", "timezone: Asia/Tokyo # x"))
        assert d.ctl_json("reload")["changed"] is True
        version = d.ctl_json("status")["policy"]["version"]
        wait_for(lambda: d.metric("nocpolicy_mqtt_outbox_events") >= 1, 30, what="event queued")
        # same port, same persistence: the daemon reconnects with backoff and keeps serving
        broker.start()
        ctl = Probe(broker, "noc-controller").subscribe("nocpolicy/v1/reply/noc-controller/#")
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 40, what="reconnected")
        ev = watcher.wait("nocpolicy/v1/events/reload", 30, pred=lambda e: e.get("version") == version)
        assert ev["ok"] is True
        assert d.metric("nocpolicy_mqtt_events_dropped_total") == 0
        watcher.wait(f"nocpolicy/v1/nodes/{NODE}/status", pred=lambda s: s["state"] == "online"
                     and s["policy"] == version)
        ctl.publish("nocpolicy/v1/cmd/noc-controller/status", json.dumps({"request_id": "after-restart"}))
        r = ctl.wait("nocpolicy/v1/reply/noc-controller/after-restart")
        assert r["ok"] and r["result"]["policy"]["version"] == version
        assert d.metric("nocpolicy_mqtt_connects_total") >= 2
        assert d.metric("nocpolicy_mqtt_connection_failures_total") >= 1
        ctl.close()
    finally:
        if watcher is not None:
            watcher.close()
        d.stop()
        broker.stop()


def test_wrong_password_is_reported_and_retried(tmp_path):
    users = dict(USERS)
    broker = Mosquitto(tmp_path, users, fleet_acl(NODE)).start()
    try:
        broker.users[NODE] = "wrong"         # the daemon's password file gets the wrong password
        d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE)).start()
        detail = wait_for(lambda: (lambda s: s if "refused the login" in s else None)(
            d.ctl_json("status")["components"]["mqtt"]["detail"]), 30, what="login refusal in status")
        assert "check the user name and --mqtt-password-file" in detail
        assert dns_answers(d)
        d.stop()
    finally:
        broker.stop()
