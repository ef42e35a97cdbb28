"""RADIUS accounting against a real nocpolicyd, with FreeRADIUS's radclient as the BNG."""

from __future__ import annotations

import signal
import socket
import struct

import pytest
from pyrad import packet as rp

from helpers import DaemonProcess, wait_for
from nocpolicy.sessions.radius import dictionary
from sessions_fixtures import SECRET, acct, radclient, start_daemon

pytestmark = pytest.mark.skipif(not __import__("shutil").which("radclient"),
                                reason="radclient (freeradius-utils) not installed")


@pytest.fixture
def daemon(tmp_path):
    d, port = start_daemon(tmp_path)
    d.radius_port = port
    yield d
    d.stop()


def answered(run) -> bool:
    return run.returncode == 0 and "Received Accounting-Response" in run.stdout


def count(d: DaemonProcess, status: str, result: str) -> float:
    return d.metric("nocpolicy_sessions_accounting_requests_total", {"status": status, "result": result}) or 0.0


def test_start_interim_stop_and_whois(daemon):
    d, port = daemon, daemon.radius_port
    t0 = 1_764_000_000    # 2025-11-24 16:00:00 UTC
    assert answered(radclient(port, acct("Start", "S1", Event_Timestamp=t0,
                                         Delegated_IPv6_Prefix="2001:db8:77:100::/56")))
    out = d.ctl_json("whois", "203.0.113.7")
    assert [m["customer"] for m in out["matches"]] == ["c1001"]
    assert out["matches"][0]["session"]["login"] == "c1001@isp.example"
    v6 = d.ctl_json("whois", "2001:db8:77:1ab::5", "--at", "2025-11-25T02:00:00+09:00")
    assert v6["matches"][0]["customer"] == "c1001" and v6["matches"][0]["matched_prefix_length"] == 56
    assert answered(radclient(port, acct("Interim-Update", "S1", Event_Timestamp=t0 + 300,
                                         Acct_Session_Time=300)))
    assert answered(radclient(port, acct("Stop", "S1", Event_Timestamp=t0 + 3600, Acct_Session_Time=3600,
                                         Acct_Terminate_Cause="User-Request")))
    s = d.ctl_json("sessions", "--customer", "c1001")["sessions"]
    assert len(s) == 1 and s[0]["stop"] == t0 + 3600 and s[0]["ended"] == "user-request"
    assert d.ctl_json("whois", "203.0.113.7", "--at", "2025-11-24T16:30:00+00:00")["matches"]
    after = d.ctl_json("whois", "203.0.113.7", "--at", "2025-11-24T18:00:00+00:00")
    assert after["matches"] == [] and "no session" in after["unattributed"]
    text = d.ctl("whois", "203.0.113.7", "--at", "2025-11-25 01:30:00").stdout   # policy zone: JST
    assert "c1001" in text and "user-request" in text
    assert count(d, "start", "ok") == 1 and count(d, "stop", "ok") == 1
    assert d.metric("nocpolicy_sessions_active", {"source": "radius"}) == 0


def test_answer_only_after_durable_survives_kill(daemon, tmp_path):
    d, port = daemon, daemon.radius_port
    assert answered(radclient(port, acct("Start", "K1", user="c1002@isp.example", ip="203.0.113.9")))
    d.proc.send_signal(signal.SIGKILL)      # no clean stop: only what was committed survives
    d.proc.wait(10)
    d2 = DaemonProcess(tmp_path, policies=d.policies)
    d2.start()
    try:
        active = d2.ctl_json("sessions", "--active")["sessions"]
        assert [(s["customer"], s["addresses"]) for s in active] == [("c1002", ["203.0.113.9"])]
    finally:
        d2.stop()


def _request(sid: str, ident: int, secret: bytes = SECRET.encode()) -> bytes:
    p = rp.AcctPacket(id=ident, secret=secret, dict=dictionary())
    p["Acct-Status-Type"] = 1
    p["Acct-Session-Id"] = sid
    p["User-Name"] = "c1003@isp.example"
    p["NAS-Identifier"] = "bng1.tokyo"
    p["Framed-IP-Address"] = "203.0.113.20"
    return p.RequestPacket()


def _exchange(port: int, wire: bytes, sock: socket.socket) -> bytes:
    sock.sendto(wire, ("127.0.0.1", port))
    return sock.recv(4096)


def test_duplicate_request_answered_again_without_second_record(daemon):
    d, port = daemon, daemon.radius_port
    wire = _request("D1", 17)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        first = _exchange(port, wire, s)
        again = _exchange(port, wire, s)          # same port, Identifier and authenticator
    assert first == again and first[0] == rp.AccountingResponse
    # a retransmission with a new Identifier (radclient -c 3: three requests) adds no record either
    assert answered(radclient(port, acct("Start", "D1", user="c1003@isp.example", ip="203.0.113.20"), count=3))
    assert len(d.ctl_json("sessions", "--customer", "c1003")["sessions"]) == 1
    assert count(d, "unknown", "duplicate") >= 1


def test_bad_input_dropped_counted_and_service_goes_on(daemon):
    d, port = daemon, daemon.radius_port
    wrong = radclient(port, acct("Start", "W1"), secret="not-the-secret", retries=1, timeout=1)
    assert not answered(wrong)
    wait_for(lambda: count(d, "unknown", "bad-authenticator") >= 1, 10, what="bad-authenticator counted")
    good = _request("B1", 3)
    bad_len = bytearray(good)
    i = bad_len.index(bytes([8, 6]))              # Framed-IP-Address: length 6 -> 5
    bad_len[i + 1] = 5
    bad_len = bytes(bad_len[:i + 6] + bad_len[i + 7:])
    bad_len = bad_len[:2] + struct.pack("!H", len(bad_len)) + bad_len[4:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for wire in (good[:15], good[:-3], b"\x04" * 5000, bad_len):
            s.sendto(wire, ("127.0.0.1", port))
    wait_for(lambda: count(d, "unknown", "malformed") >= 3, 10, what="malformed counted")
    # a Stop without a Start is recorded (and counted), answered
    assert answered(radclient(port, acct("Stop", "NS1", ip="203.0.113.50", Acct_Session_Time=60)))
    assert d.metric("nocpolicy_sessions_no_start_total") == 1
    assert answered(radclient(port, acct("Start", "OK1", ip="203.0.113.51")))
    assert d.ctl_json("whois", "203.0.113.51")["matches"][0]["customer"] == "c1001"
    assert "dropped (bad-authenticator)" in d.log() and "dropped (malformed)" in d.log()


def test_accounting_on_closes_the_nas_sessions(daemon):
    d, port = daemon, daemon.radius_port
    for i in range(3):
        assert answered(radclient(port, acct("Start", f"A{i}", ip=f"203.0.113.{60 + i}")))
    assert len(d.ctl_json("sessions", "--active")["sessions"]) == 3
    assert answered(radclient(port, 'Acct-Status-Type = Accounting-On\nNAS-Identifier = "bng1.tokyo"\n'))
    assert d.ctl_json("sessions", "--active")["sessions"] == []
    assert {s["ended"] for s in d.ctl_json("sessions")["sessions"]} == {"accounting-on"}


def test_stale_session_closed_and_counted(tmp_path):
    d, port = start_daemon(tmp_path, grace="1s")
    try:
        # announces a 1 s interim interval and then says nothing more: stale after 1 s + 1 s grace
        assert answered(radclient(port, acct("Start", "ST1", ip="203.0.113.70", Acct_Interim_Interval=1)))
        wait_for(lambda: d.metric("nocpolicy_sessions_stale_closed_total") == 1, 30, what="stale close")
        (s,) = d.ctl_json("sessions")["sessions"]
        assert s["ended"] == "stale" and d.ctl_json("sessions", "--active")["sessions"] == []
    finally:
        d.stop()
