"""NICT advisories (Art. 45(3)) end to end: a real nocpolicyd with RADIUS accounting fed by
the real radclient, a real SMTP server (aiosmtpd), imports through the CLI and the admin
API; attribution by static prefix and by live session, de-duplication, unattributable
cases with their reason, alerts in the contact's language, states, metrics."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading
import urllib.request

import pytest

from helpers import (
    DaemonProcess,  # noqa: E402  (after the fixtures that define the policy)
    free_port,
    wait_for,
)
from sessions_fixtures import acct, radclient, sessions_policy
from test_maintenance_smtp import SmtpSink, smtp_yaml

T0 = dt.datetime(2026, 7, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=9)))


class Hooks(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on loopback: keeps (Idempotency-Key, JSON body) of every POST."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.received.append((self.headers["Idempotency-Key"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("advisories")
    hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    with SmtpSink() as sink:
        radius_port = free_port(kind=2)
        pol = sessions_policy(tmp, radius_port, "\nadvisories:\n  dedup_window: 7d\n")
        (pol / "maintenance.yaml").write_text(smtp_yaml(sink.port, "  webhooks: true\n"))
        customers = pol / "customers.yaml"          # c1002's webhook: the receiver above, on loopback
        customers.write_text(customers.read_text().replace("https://hooks.sakura-design.example/noc",
                                                           f"http://127.0.0.1:{hooks.server_port}/hook"))
        d = DaemonProcess(tmp, policies=pol).start()
        res = radclient(radius_port, acct("Start", "adv-1", user="c1002@isp.example", ip="10.77.0.9"))
        assert res.returncode == 0, res.stderr
        yield d, sink
        d.stop()
    hooks.shutdown()


def adv(aid, source, address, time, service, finding, port=None):
    out = {"advisory_id": aid, "source": source, "address": address, "time": time.isoformat(),
           "service": service, "finding": finding}
    if port is not None:
        out["port"] = port
    return out


def test_import_attributes_deduplicates_and_alerts_in_the_contacts_language(env, tmp_path):
    d, sink = env
    now = dt.datetime.now(dt.UTC)
    batch = [
        adv("N-1", "notice", "192.0.2.10", T0, "telnet", "weak-credentials", 23),             # c1001 (static, ja)
        adv("N-2", "notice", "192.0.2.11", T0 + dt.timedelta(hours=5), "telnet", "weak-credentials", 23),
        adv("N-1", "notice", "192.0.2.10", T0, "telnet", "weak-credentials", 23),             # the same one again
        adv("X-1", "nicter", "10.77.0.9", now, "scan", "malware-mirai"),                      # c1002's session
        adv("N-3", "notice", "198.51.100.5", T0, "http", "open-proxy", 8080),                 # c1003 (en)
        adv("X-2", "nicter", "192.0.2.250", T0, "scan", "malware-mirai"),                     # nobody's
        adv("N-4", "notice", "192.0.2.10", T0 + dt.timedelta(days=30), "telnet", "weak-credentials", 23),
    ]
    f = tmp_path / "notice.json"
    f.write_text(json.dumps({"advisories": batch}))
    out = d.ctl("advisory", "import", str(f), check=True).stdout
    assert "7 advisories: 4 new case(s), 1 joined an open case, 1 duplicate(s), 1 unattributable" in out
    wait_for(lambda: len(sink.messages) >= 4, 30, what="four alerts through SMTP")
    by_rcpt = {m["rcpt"][0]: m["msg"] for m in sink.messages}
    ja = [m["msg"] for m in sink.messages if m["rcpt"] == ["fault@yamada.example"]]
    assert len(ja) == 2                        # N-4 came 30 days later: a case of its own
    assert all("セキュリティ" in m["Subject"] and "Security" not in m["Subject"] for m in ja)
    body = next(m.get_content() for m in ja if "通知件数: 2" in m.get_content())
    assert "192.0.2.10 port 23" in body and "telnet" in body and "パスワード" in body and "NOTICE" in body
    assert "2026-07-01 09:30 JST" in body
    en = by_rcpt["it-ops@minato-research.example"]
    assert en["Subject"] == "Security advisory about a device on your line" and "open-proxy" in en.get_content()
    both = by_rcpt["noc@sakura-design.example"].get_content()
    assert "NICTER" in both and "What to do" in both and "マルウェア" in both
    # c1002's contact also has a webhook: the same alert, keyed by its Message-ID
    wait_for(lambda: Hooks.received, 30, what="the webhook alert")
    key, hook = Hooks.received[0]
    assert key == hook["message_id"] == by_rcpt["noc@sakura-design.example"]["Message-ID"]
    assert (hook["account"], hook["finding"], hook["address"]) == ("c1002", "malware-mirai", "10.77.0.9")
    assert "What to do" in hook["text"] and "マルウェア" in hook["text"]
    wait_for(lambda: len(d.ctl_json("advisories", "--state", "notified")["cases"]) == 4, 30,
             what="four cases notified")
    cases = d.ctl_json("advisories")["cases"]
    first = next(c for c in cases if c["customer"] == "c1001" and c["first_seen"].startswith("2026-07-01"))
    assert first["reports"] == 2 and first["alert_state"] == "sent"
    unattributable = [c for c in cases if c["state"] == "unattributable"]
    assert len(unattributable) == 1 and "no session held 192.0.2.250" in unattributable[0]["reason"]
    assert {c["customer"] for c in cases if c["source"] == "nicter" and c["state"] == "notified"} == {"c1002"}
    summary = d.ctl("advisories", "--summary", check=True).stdout
    assert "notified" in summary and "unattributable" in summary and "alerts: sent 4" in summary
    assert d.metric("nocpolicy_advisory_cases", {"state": "notified", "source": "notice"}) == 3
    assert d.metric("nocpolicy_advisory_cases", {"state": "unattributable", "source": "nicter"}) == 1
    assert d.metric("nocpolicy_advisories_received_total", {"source": "notice", "result": "duplicate"}) == 1
    metrics = d.metrics()
    assert "c1001" not in metrics and "192.0.2.10" not in metrics
    # the same file again: nothing new, no second alert
    again = d.ctl_json("advisory", "import", str(f))
    assert (again["duplicate"], again["new_cases"], again["alerts_queued"]) == (7, 0, 0)
    # resolve one, and the states refuse what does not follow
    assert d.ctl("advisory", "resolve", str(first["id"]), "--reason", "password changed", check=True)
    assert d.ctl("advisory", "resolve", str(first["id"])).returncode == 1          # already resolved
    audit = d.ctl_json("audit", "--subject", f"advisory-case:{first['id']}")["audit"]
    assert audit[0]["after"] == {"state": "resolved", "reason": "password changed"}
    assert len(sink.messages) == 4 and len(Hooks.received) == 1


def test_bad_import_is_refused_whole_naming_line_and_field(env, tmp_path):
    d, _ = env
    before = len(d.ctl_json("advisories", "--limit", "1000")["cases"])
    f = tmp_path / "nicter.csv"
    f.write_text("advisory_id,source,address,port,time,service,finding\n"
                 "B-1,nicter,192.0.2.12,,2026-07-02T10:00:00+09:00,scan,malware-mirai\n"
                 "B-2,nicter,192.0.2.13,,2026-07-02T10:00:00,scan,malware-mirai\n"
                 "B-3,nictr,300.1.1.1,70000,2026-07-02T10:00:00+09:00,scan,malware mirai\n")
    res = d.ctl("advisory", "import", str(f))
    assert res.returncode == 1
    for where in ("nicter.csv:3: time:", "nicter.csv:4: source:", "nicter.csv:4: address:", "nicter.csv:4: port:",
                  "nicter.csv:4: finding:"):
        assert where in res.stderr, res.stderr
    assert len(d.ctl_json("advisories", "--limit", "1000")["cases"]) == before
    # the admin API takes the same text; a good CSV goes in
    good = "advisory_id,source,address,time,service,finding\nB-9,nicter,192.0.2.12,2026-07-02T10:00:00+09:00,scan,x\n"
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/advisory.import", method="POST",
                                 data=json.dumps({"text": good, "format": "csv"}).encode(),
                                 headers={"Authorization": f"Bearer {d.token()}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["new_cases"] == 1


def test_alert_to_the_contacts_mqtt_topic_through_the_bridge(tmp_path):
    """c2001's contact has an mqtt_topic (and no SMTP relay here): the alert is published there
    through the daemon's MQTT bridge (real mosquitto), QoS 1, and the case becomes notified."""
    from mosquitto_fixture import Mosquitto
    from test_maintenance_mqtt import NODE, POLICY_TOPIC, USERS, Subscriber, acl

    broker = Mosquitto(tmp_path, USERS, acl()).start()
    sub = Subscriber(broker, POLICY_TOPIC)
    d = DaemonProcess(tmp_path, extra_args=broker.daemon_args(NODE)).start()
    try:
        wait_for(lambda: d.metric("nocpolicy_mqtt_connected") == 1, 20, what="daemon connected")
        f = tmp_path / "a.csv"
        f.write_text("advisory_id,source,address,port,time,service,finding\n"
                     "Q-1,notice,198.51.100.130,80,2026-07-04T12:00:00+09:00,http,weak-credentials\n")
        assert "1 alert(s) queued" in d.ctl("advisory", "import", str(f), check=True).stdout
        topic, retained, doc = sub.wait(lambda m: m[2].get("case") is not None)
        assert (topic, retained) == (POLICY_TOPIC, False)
        assert (doc["account"], doc["address"], doc["port"]) == ("c2001", "198.51.100.130", 80)
        assert "パスワード" in doc["text"] and "password" in doc["text"]
        wait_for(lambda: d.ctl_json("advisories")["cases"][0]["state"] == "notified", 20, what="notified")
        case = d.ctl_json("advisories")["cases"][0]
        assert case["mqtt_state"] == "delivered" and case["alert_state"] == "pending"     # e-mail waits
    finally:
        d.stop()
        sub.close()
        broker.stop()
