"""Notices published to a contact's mqtt_topic through the daemon's MQTT bridge (real mosquitto)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading

import icalendar
import pytest

from helpers import DaemonProcess, copy_policies, wait_for
from mosquitto_fixture import Mosquitto, fleet_acl
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy
from test_maintenance_daemon import add_args
from test_maintenance_smtp import T0, Harness, until, window

NODE = "edge-tokyo-1"                       # settings.node of the example policy; the daemon's MQTT user
USERS = {NODE: "node-pw", "portal": "portal-pw"}
POLICY_TOPIC = "nocpolicy/v1/contacts/c2001"  # c2001's contact in policies/customers.yaml
RUNTIME_TOPIC = "customers/c1002/noc-notices"


def acl() -> str:
    return (fleet_acl(NODE) + "topic write nocpolicy/v1/contacts/#\ntopic write customers/#\n\n"
            "user portal\ntopic read nocpolicy/v1/contacts/#\ntopic read customers/#\n")


class Subscriber:
    """mosquitto_sub with a persistent session (-c): QoS 1 messages published while it or the
    broker is away are kept for it and delivered when both are back."""

    def __init__(self, broker: Mosquitto, *topics: str):
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", "portal", "-P", USERS["portal"],
               "-q", "1", "-c", "-i", f"portal-{broker.port}", "-v", "-F", "%t %r %p"]
        for t in topics:
            cmd += ["-t", t]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def messages(self) -> list[tuple[str, bool, dict]]:
        out = []
        for line in list(self.lines):
            topic, retained, body = line.split(" ", 2)
            out.append((topic, retained == "1", json.loads(body)))
        return out

    def wait(self, pred, timeout: float = 20.0):
        return wait_for(lambda: next((m for m in self.messages() if pred(m)), None), timeout,
                        what="a notice on the subscriber")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def notice_rows(d: DaemonProcess, window_id: str) -> list[dict]:
    return d.ctl_json("notices", "--window", window_id)["notices"]


def test_notices_reach_mqtt_topic_and_survive_a_broker_outage(tmp_path):
    broker = Mosquitto(tmp_path, USERS, acl()).start()
    sub = Subscriber(broker, POLICY_TOPIC, RUNTIME_TOPIC)
    d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE)).start()
    try:
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 20, what="daemon connected")
        for t in (POLICY_TOPIC, RUNTIME_TOPIC):      # the subscriber's session holds both subscriptions
            assert broker.pub(NODE, t, json.dumps({"maintenance_id": "probe", "t": t})).returncode == 0
            sub.wait(lambda m, t=t: m[2].get("t") == t)

        # 1. the policy contact (e-mail + mqtt_topic): published with QoS 1, not retained, once acknowledged
        assert d.ctl(*add_args("mw-mq1", 30, "--customers", "c2001")).returncode == 0
        [row] = notice_rows(d, "mw-mq1")
        assert row["mqtt_topic"] == POLICY_TOPIC and row["state"] == "pending"     # e-mail: no SMTP here
        wait_for(lambda: notice_rows(d, "mw-mq1")[0]["mqtt_state"] == "delivered", 20, what="delivered")
        topic, retained, doc = sub.wait(lambda m: m[2]["maintenance_id"] == "mw-mq1")
        assert topic == POLICY_TOPIC and retained is False
        assert doc["message_id"] == row["message_id"] and doc["account"] == "c2001"
        assert doc["notice"] == "notice" and doc["status"] == "CONFIRMED" and doc["impact"] == "OUTAGE"
        assert doc["reason"] == {"ja": "光ファイバ収容替え", "en": "fibre re-termination"}
        cal = icalendar.Calendar.from_ical(doc["icalendar"])
        [ev] = [c for c in cal.walk("VEVENT")]
        assert str(ev["X-MAINTNOTE-MAINTENANCE-ID"]) == "mw-mq1"
        assert d.metric("nocpolicy_notice_mqtt_total", {"result": "delivered"}) == 1

        # 2. a wildcard topic is refused by contact.set, naming the field; nothing is recorded
        bad = d.ctl("contact", "set", "c1002", "--mqtt-topic", "customers/+/noc")
        assert bad.returncode == 1 and "mqtt_topic" in bad.stderr and "wildcard" in bad.stderr, bad.stderr
        assert len(d.ctl_json("contact", "show", "c1002")["history"]) == 1

        # 3. an MQTT-only contact: no "failed: no e-mail" row; the broker is down, the row waits
        res = d.ctl("contact", "set", "c1002", "--mqtt-topic", RUNTIME_TOPIC, "--reason", "portal")
        assert res.returncode == 0, res.stderr
        broker.stop()
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 0, 20, what="daemon sees the broker gone")
        assert d.ctl(*add_args("mw-mq2", 31, "--customers", "c1002")).returncode == 0
        wait_for(lambda: notice_rows(d, "mw-mq2")[0]["mqtt_attempts"] >= 1, 20, what="first attempt")
        [row2] = notice_rows(d, "mw-mq2")
        assert row2["state"] == "skipped" and row2["recipient"] is None, row2
        assert row2["mqtt_state"] == "pending" and "not connected" in row2["mqtt_error"], row2
        assert "mqtt:pending" in d.ctl("notices", "--window", "mw-mq2", check=True).stdout
        assert d.metric("nocpolicy_notice_mqtt_total", {"result": "retry"}) >= 1

        # 4. the broker is back: delivered without waiting out the backoff (the reconnect makes it due)
        broker.start()
        wait_for(lambda: notice_rows(d, "mw-mq2")[0]["mqtt_state"] == "delivered", 20, what="delivered after")
        topic, retained, doc = sub.wait(lambda m: m[2]["maintenance_id"] == "mw-mq2", 30)
        assert topic == RUNTIME_TOPIC and not retained
        assert doc["message_id"] == row2["message_id"] and doc["account"] == "c1002"
    finally:
        sub.close()
        d.stop()
        broker.stop()


async def test_without_mqtt_rows_wait_with_the_outbox_backoff(tmp_path):
    """No bridge (the embedded default): pending, retried with the same backoff as e-mail/webhooks."""
    h = await Harness(tmp_path, None).start()
    try:
        await h.cmd("contact.set", customer="c1002", mqtt_topic=RUNTIME_TOPIC)
        await h.cmd("maintenance.add", **window("mw-x", "2026-01-20T01:00", "2026-01-20T05:00",
                                                scope={"customers": ["c1002"]}))

        def row():
            return h.store.one("SELECT * FROM mw_mqtt")
        await until(lambda: row()["attempts"] == 1, what="first attempt")
        assert row()["state"] == "pending" and "bridge" in row()["last_error"]
        assert dt.datetime.fromisoformat(row()["next_attempt"]) == T0 + dt.timedelta(seconds=30)
        h.clock.advance(30)
        await until(lambda: row()["attempts"] == 2, what="second attempt")
        assert dt.datetime.fromisoformat(row()["next_attempt"]) == T0 + dt.timedelta(seconds=90)
        assert h.store.one("SELECT state FROM mw_outbox")["state"] == "skipped"
        assert h.metric("nocpolicy_notice_mqtt_total", result="retry") == 2
    finally:
        await h.stop()


async def test_contact_change_retargets_undelivered_mqtt_rows(tmp_path):
    h = await Harness(tmp_path, None).start()
    try:
        await h.cmd("maintenance.add", **window("mw-r", "2026-01-20T01:00", "2026-01-20T05:00",
                                                scope={"customers": ["c1002"]}))
        assert h.store.one("SELECT COUNT(*) n FROM mw_mqtt")["n"] == 0     # the policy contact has no topic
        out = await h.cmd("contact.set", customer="c1002", email="noc@sakura-design.example",
                          mqtt_topic="customers/c1002/a")
        assert out["mqtt_retargeted"] == 1
        assert dict(h.store.one("SELECT topic, state FROM mw_mqtt")) == {"topic": "customers/c1002/a",
                                                                          "state": "pending"}
        out = await h.cmd("contact.set", customer="c1002", mqtt_topic="customers/c1002/b")
        assert out["mqtt_retargeted"] == 1
        row = h.store.one("SELECT topic, state, last_error FROM mw_mqtt")
        assert row["topic"] == "customers/c1002/b" and row["state"] == "pending"
    finally:
        await h.stop()


@pytest.mark.parametrize("topic, reason", [
    ('"customers/+/noc"', "wildcard"),
    ('"customers/#"', "wildcard"),
    ('"a\\u0000b"', "NUL"),
    ('""', "must not be empty"),
    ('"$SYS/x"', "reserved"),
    ('"nocpolicy/v1/cmd/noc/reload"', "control plane"),
    ("x" * 65536, "at most 65535"),
])
def test_invalid_topic_in_policy_is_refused_with_file_and_line(tmp_path, topic, reason):
    pol = copy_policies(tmp_path)
    path = pol / "customers.yaml"
    lines = path.read_text().splitlines()
    [i] = [n for n, line in enumerate(lines) if "mqtt_topic:" in line]
    lines[i] = lines[i].split("mqtt_topic:")[0] + f"mqtt_topic: {topic}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PolicyInvalid) as info:
        load_policy(pol)
    [p] = [str(p) for p in info.value.problems]
    assert p.startswith(f"{path}:{i + 1}: customers[") and ".contact.mqtt_topic: " in p and reason in p, p
