"""Suspensions as fleet state (issues 16, 18): decided at a real controller, enforced by a real
agent's DNS guard and shown on its notice page, through a real mosquitto running the shipped ACL.
The controller alone keeps the rows, the timers and the letters."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest

from helpers import DaemonProcess, free_port, wait_for
from mosquitto_fixture import Mosquitto, Probe
from suspension_fixtures import PAGE_A, UNBOUND_DATA, Unbound, addresses, ede, policy_dir
from test_fleet_state import AGENT, CONTROLLER, CTL_USER, OTHER, SHIPPED_ACL, USERS, converged, row
from test_maintenance_smtp import SmtpSink

NORMAL = ["198.51.100.7"]
URGENT = ["--urgent", "--justification", "fraud in progress"]


def policy(tmp: Path, upstream: int, smtp: int) -> Path:
    """The suspension test policy (c-home 127.0.0.1, c-two 127.0.0.2 ...) in a fleet of two agents;
    c-two is served by edge-tokyo-3 only. Each daemon has its own notice-page port."""
    pol = policy_dir(tmp, upstream, smtp, free_port())
    c = pol / "customers.yaml"
    c.write_text(c.read_text().replace("    contact: {email: two@customer.example, language: en}\n",
                                       "    contact: {email: two@customer.example, language: en}\n"
                                       f"    nodes: [{OTHER}]\n"))
    s = pol / "settings.yaml"
    s.write_text(re.sub(r"  groups:\n(    .*\n)+", f"  groups:\n    tokyo: [{AGENT}, {OTHER}]\n", s.read_text()))
    return pol


def ask(d: DaemonProcess, source: str = "127.0.0.1"):
    return dns.query.udp(dns.message.make_query("www.example.test", "A", use_edns=0), "127.0.0.1",
                         port=d.dns_port, timeout=3, source=source)


def walled(d: DaemonProcess, source: str = "127.0.0.1") -> bool:
    return addresses(ask(d, source)) == [PAGE_A]


def normal(d: DaemonProcess, source: str = "127.0.0.1") -> bool:
    return addresses(ask(d, source)) == NORMAL


def post(d: DaemonProcess, command: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/{command}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {d.token()}",
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def notice_page(d: DaemonProcess) -> str:
    port = int(re.search(r"listen: 127\.0\.0\.1:(\d+)", (d.policies / "suspension.yaml").read_text())[1])
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=("127.0.0.1", 0))
    c.request("GET", "/any/path", headers={"Host": "news.example", "Accept-Language": "en"})
    return c.getresponse().read().decode()


def newer(ctl: DaemonProcess, than: int):
    """The agent's suspension row once it holds a fleet-wide version above ``than``, converged."""
    r = converged(ctl, "suspension")
    return r if r and r["held"][0] > than else None


def suspend(ctl: DaemonProcess, customer: str, mode: str = "walled-garden", reason: str = "invoice 7 unpaid"):
    ctl.ctl("suspend", customer, "--cause", "nonpayment", "--mode", mode, "--reason", reason, *URGENT, check=True)


@pytest.fixture
def env(tmp_path):
    with SmtpSink() as sink:
        broker = Mosquitto(tmp_path, USERS, SHIPPED_ACL).start()
        ub = Unbound(tmp_path, UNBOUND_DATA).start()
        for d in ("ctl", "agent"):
            (tmp_path / d).mkdir()
        ctl = DaemonProcess(tmp_path / "ctl", policies=policy(tmp_path / "ctl", ub.port, sink.port),
                            extra_args=broker.daemon_args(CTL_USER) + ["--role", "controller", "--node", CONTROLLER,
                                                                        "--enforce", "off", "--no-watch"])
        agent = DaemonProcess(tmp_path / "agent", policies=policy(tmp_path / "agent", ub.port, sink.port),
                              extra_args=broker.daemon_args(AGENT) + ["--role", "agent", "--node", AGENT,
                                                                       "--enforce", "off", "--no-watch"])
        try:
            yield broker, ctl, agent, sink
        finally:
            for d in (ctl, agent):
                d.kill()
            ub.stop()
            broker.stop()


def test_walled_garden_at_the_controller_reaches_the_agent_and_resume_lifts_it(env):
    broker, ctl, agent, sink = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "suspension"), 60, what="agent converged")
    before = row(ctl, "suspension")["held"][0]
    assert normal(agent) and normal(agent, "127.0.0.2")

    suspend(ctl, "c-two")           # served by edge-tokyo-3 only: never reaches this agent
    suspend(ctl, "c-home")
    wait_for(lambda: walled(agent), 30, what="the agent answers c-home with the notice page")
    assert ede(ask(agent))[0] == (17, "suspended (nonpayment): invoice 7 unpaid")
    r = wait_for(lambda: newer(ctl, before), 30, what="suspension acknowledged")
    assert r["held"] == r["want"]
    assert normal(agent, "127.0.0.2")                    # c-two: not in this node's scope
    assert walled(ctl, "127.0.0.2")                      # ... but enforced where it was decided
    page = notice_page(agent)
    assert "invoice 7 unpaid" in page and "non-payment of charges (Art. 25)" in page, page
    assert "until resumed" in page, page                  # the period: no end given

    # the agent shows what it adopted, and refuses to decide suspensions itself, naming the controller
    adopted = agent.ctl_json("suspensions")
    assert [s["customer"] for s in adopted["fleet"]] == ["c-home"] and adopted["suspensions"] == []
    audit = agent.ctl_json("audit", "--subject", "fleet:suspension")["audit"]
    assert audit and audit[0]["action"] == "suspension.adopt" and audit[0]["actor"] == f"mqtt:{CONTROLLER}"
    for cmd, body in [("suspension.suspend", {"customer": "c-home", "cause": "nonpayment", "mode": "block",
                                              "reason": "x", "urgent": True, "justification": "j"}),
                      ("suspension.resume", {"customer": "c-home"}),
                      ("suspension.terminate", {"customer": "c-home", "reason": "x"}),
                      ("abolition.announce", {"scope": {"plans": ["home"]}, "date": "2030-01-01", "reason": "x"})]:
        status, body = post(agent, cmd, body)
        assert status == 409 and f"fleet controller {CONTROLLER}, not on agent {AGENT}" in body["error"], body
    assert "state suspension version" in ctl.ctl("fleet", "status").stdout
    assert agent.ctl_json("fleet", "status")["state"]["held"]["suspension"]["fleet"] == r["held"][0]
    assert agent.metric("nocpolicy_suspensions_adopted", {"mode": "walled-garden"}) == 1
    assert "c-home" not in agent.metrics()

    held = row(ctl, "suspension")["held"][0]
    ctl.ctl("resume", "c-home", "--reason", "paid", check=True)
    wait_for(lambda: normal(agent), 30, what="the agent's answer back to normal")
    wait_for(lambda: newer(ctl, held), 30, what="resume acknowledged")
    assert agent.ctl_json("suspensions")["fleet"] == []

    # letters come from the controller only: c-home's notice and end, c-two's notice
    def letters(to: str) -> int:
        return sum(1 for m in list(sink.messages) if to in m["rcpt"])
    wait_for(lambda: letters("home@customer.example") == 2 and letters("two@customer.example") == 1, 30,
             what="the controller's letters")
    assert ctl.metric("nocpolicy_suspension_notices", {"kind": "notice", "state": "sent"}) == 2
    assert "nocpolicy_suspension_notices{" not in agent.metrics()       # the agent queued none


def test_agent_restart_without_broker_keeps_enforcing_and_offline_agent_converges(env):
    broker, ctl, agent, sink = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "suspension"), 60, what="agent converged")
    suspend(ctl, "c-home", mode="block", reason="abuse report 12")
    wait_for(lambda: walled(agent), 30, what="the agent blocks c-home")

    # restarted without a broker: enforced from its own store before it serves
    agent.kill()
    broker.stop()
    agent.start()
    assert walled(agent) and ede(ask(agent))[0] == (17, "suspended (nonpayment): abuse report 12")
    assert "abuse report 12" in notice_page(agent)

    # offline while the controller resumes: converges on reconnect
    held = row(ctl, "suspension")["held"][0]
    agent.kill()
    broker.start()
    ctl.ctl("resume", "c-home", check=True)
    agent.start()
    wait_for(lambda: normal(agent), 60, what="the agent lifted the block after reconnecting")
    wait_for(lambda: newer(ctl, held), 30, what="the agent holds the controller's latest version")


BAD = [
    ({"mode": "vacation"}, "mode"),
    ({"rate": None, "mode": "throttle"}, "rate"),
    ({"start": "yesterday"}, "start"),
    ({"reason": "x" * 501}, "reason"),
    ({"extra": 1}, "extra"),
]


def test_invalid_suspension_entry_is_refused_and_the_last_good_state_kept(env):
    broker, ctl, agent, sink = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "suspension"), 60, what="agent converged")
    suspend(ctl, "c-home")
    wait_for(lambda: walled(agent), 30, what="walled on the agent")
    r = wait_for(lambda: converged(ctl, "suspension"), 30, what="acknowledged")
    good = agent.ctl_json("suspensions")["fleet"][0]
    entry = {k: good[k] for k in ("id", "mode", "cause", "reason", "start", "end", "rate")}
    forger = Probe(broker, CTL_USER)          # the ACL lets only the controller's user write state
    head = {"kind": "suspension", "scope": "fleet", "node": None, "controller": CONTROLLER, "issued_at": "x"}
    for i, (change, field) in enumerate(BAD):
        n = agent.metric("nocpolicy_fleet_state_refused_total", {"reason": "invalid"}) or 0
        forger.publish("nocpolicy/v1/fleet/suspension/snap",
                       json.dumps({**head, "version": r["want"][0] + 10 + i, "entries": {"c-home": {**entry, **change}}}))
        wait_for(lambda n=n: (agent.metric("nocpolicy_fleet_state_refused_total", {"reason": "invalid"}) or 0) > n,
                 30, what=f"refused: {field}")
        assert walled(agent) and ede(ask(agent))[0][1].endswith("invoice 7 unpaid")     # the last good state
        assert re.search(rf"fleet state refused \(invalid\): .*c-home: {field}", agent.log()), field
    assert agent.proc.poll() is None
    forger.close()


def test_a_cut_off_agent_lifts_a_suspension_at_its_end(env):
    """The period in the notice binds every node: an agent that cannot hear the controller
    lifts an adopted suspension at its end by itself."""
    broker, ctl, agent, sink = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "suspension"), 60, what="agent converged")
    until = (dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=30)).isoformat()
    ctl.ctl("suspend", "c-home", "--cause", "obligations", "--mode", "walled-garden", "--reason", "spam relay",
            "--until", until, *URGENT, check=True)
    wait_for(lambda: walled(agent), 25, what="walled on the agent")
    broker.stop()                                          # the controller's lift can no longer arrive
    assert dt.datetime.now(dt.UTC) < dt.datetime.fromisoformat(until), "too slow to cut the agent off in time"
    assert walled(agent)
    wait_for(lambda: normal(agent), 30 + 30, what="the agent lifted it at its end")
    assert dt.datetime.now(dt.UTC) >= dt.datetime.fromisoformat(until)
    assert "c-home ended at their time: lifted on this node" in agent.log()
    assert agent.ctl_json("suspensions")["fleet"] == []


def test_a_timed_start_and_end_at_the_controller_reach_the_agent(env):
    """A scheduled suspension is not fleet state until the controller's timer starts it; its start
    and its end are new versions the agent follows."""
    broker, ctl, agent, sink = env
    ctl.start()
    agent.start()
    v = wait_for(lambda: converged(ctl, "suspension"), 60, what="agent converged")["held"][0]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start, end = now + dt.timedelta(seconds=25), now + dt.timedelta(seconds=40)
    ctl.ctl("suspend", "c-home", "--cause", "obligations", "--mode", "walled-garden", "--reason", "spam relay",
            "--from", start.isoformat(timespec="seconds"), "--until", end.isoformat(timespec="seconds"), check=True)
    assert ctl.ctl_json("suspensions")["suspensions"][0]["state"] == "scheduled"
    if dt.datetime.now(dt.UTC) < start:
        assert normal(agent)                       # the notice went out; the restriction has not begun
    wait_for(lambda: walled(agent), 25 + 30, what="walled on the agent at the start")
    assert dt.datetime.now(dt.UTC) >= start
    started = wait_for(lambda: newer(ctl, v), 30, what="the start acknowledged")["held"][0]
    assert started > v
    wait_for(lambda: normal(agent), 15 + 30, what="lifted on the agent at the end")
    assert dt.datetime.now(dt.UTC) >= end
    wait_for(lambda: newer(ctl, started), 30, what="the end acknowledged: a new version from the controller")
    letters = [m["msg"]["Subject"] for m in list(sink.messages) if "home@customer.example" in m["rcpt"]]
    assert len(letters) == 3, letters                # notice, started, ended: all from the controller
