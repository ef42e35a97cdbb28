"""Suspensions through a real nocpolicyd: the CLI and the admin API (bad input named by field),
audit records, /metrics without customer labels, and a suspension that survives a restart
and a DNS worker process (--workers 2) that learns it from the store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import dns.message
import dns.query
import pytest

from helpers import DaemonProcess, free_port, wait_for
from suspension_fixtures import PAGE_A, UNBOUND_DATA, Unbound, addresses, ede, policy_dir
from test_maintenance_smtp import SmtpSink


def ask(d: DaemonProcess, name: str, rdtype: str = "A"):
    q = dns.message.make_query(name, rdtype, use_edns=0)
    return dns.query.udp(q, "127.0.0.1", port=d.dns_port, timeout=3, source="127.0.0.1")


def post(d: DaemonProcess, command: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/{command}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {d.token()}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def daemon(tmp_path):
    with SmtpSink() as sink:
        ub = Unbound(tmp_path, UNBOUND_DATA).start()
        d = DaemonProcess(tmp_path, policies=policy_dir(tmp_path, ub.port, sink.port, free_port()),
                          extra_args=["--workers", "2"])
        try:
            yield d.start(), sink
        finally:
            d.stop()
            ub.stop()


def test_cli_admin_api_metrics_and_restart(daemon):
    d, sink = daemon
    assert addresses(ask(d, "www.example.test")) == ["198.51.100.7"]
    res = d.ctl("suspend", "c-home", "--cause", "nonpayment", "--mode", "walled-garden", "--reason", "unpaid",
                "--urgent")
    assert res.returncode == 1 and "justification" in res.stderr
    d.ctl("suspend", "c-home", "--cause", "nonpayment", "--mode", "walled-garden", "--reason", "invoice 7 unpaid",
          "--urgent", "--justification", "third reminder", check=True)
    # every DNS process answers the notice page at once (two workers share the port: ask a few times)
    for _ in range(8):
        a = ask(d, "www.example.test")
        assert addresses(a) == [PAGE_A] and ede(a)[0] == (17, "suspended (nonpayment): invoice 7 unpaid")
    status, body = post(d, "suspension.suspend", {"customer": "c-home", "cause": "nonpayment", "mode": "block",
                                                  "reason": "x", "from": "yesterday"})
    assert status == 400 and body["field"] == "from" and "ISO 8601" in body["error"]
    status, body = post(d, "suspension.suspend", {"customer": "c-zzz", "cause": "nonpayment", "mode": "block",
                                                  "reason": "x", "urgent": True, "justification": "j"})
    assert status == 404 and body["field"] == "customer"
    out = d.ctl_json("suspensions", "--terminable")
    assert [s["customer"] for s in out["suspensions"]] == ["c-home"]         # nonpayment: at once
    text = d.metrics()
    assert 'nocpolicy_suspensions{mode="walled-garden",state="active"} 1.0' in text
    assert "nocpolicy_suspensions_terminable 1.0" in text
    assert "c-home" not in text
    audit = d.ctl_json("audit", "--subject", "customer:c-home")["audit"]
    assert [(a["action"], a["actor"], a["after"]["mode"]) for a in audit] == [
        ("suspension.terminable", "timer", "walled-garden"), ("suspension.add", "admin", "walled-garden")]

    d.stop()
    d.start()
    for _ in range(8):
        assert addresses(ask(d, "www.example.test")) == [PAGE_A]
    d.ctl("resume", "c-home", "--reason", "paid", check=True)
    for _ in range(8):
        assert addresses(ask(d, "www.example.test")) == ["198.51.100.7"]
    wait_for(lambda: len([m for m in sink.messages if "home@customer.example" in m["rcpt"]]) == 2,
             what="notice and resume letters")
