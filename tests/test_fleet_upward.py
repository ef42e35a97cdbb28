"""Sessions flow upward: an agent's RADIUS sessions reach the controller's whois (real mosquitto,
real radclient, two real daemons)."""

from __future__ import annotations

import datetime as dt
import re
import signal

import pytest

from helpers import DaemonProcess, copy_policies, free_port, wait_for
from mosquitto_fixture import Mosquitto, fleet_acl
from sessions_fixtures import acct, radclient, sessions_policy

CONTROLLER, AGENT = "noc-central", "edge-s1"
T0 = 1_764_000_000    # 2025-11-24 16:00:00 UTC


def with_fleet(pol):
    s = pol / "settings.yaml"
    s.write_text(re.sub(r"  groups:\n(    .*\n)+", f"  groups:\n    bng: [{AGENT}]\n", s.read_text()))
    return pol


@pytest.fixture
def env(tmp_path):
    users = {CONTROLLER: "c-pw", AGENT: "a-pw"}
    broker = Mosquitto(tmp_path, users, fleet_acl(CONTROLLER, agents=[AGENT])).start()
    for d in ("ctl", "agent"):
        (tmp_path / d).mkdir()
    ctl = DaemonProcess(tmp_path / "ctl", policies=with_fleet(copy_policies(tmp_path / "ctl")),
                        extra_args=broker.daemon_args(CONTROLLER) + ["--role", "controller", "--node", CONTROLLER,
                                                                      "--enforce", "off", "--no-watch"])
    port = free_port(kind=2)
    agent = DaemonProcess(tmp_path / "agent", policies=with_fleet(sessions_policy(tmp_path / "agent", port)),
                          extra_args=broker.daemon_args(AGENT) + ["--role", "agent", "--node", AGENT,
                                                                   "--enforce", "off", "--no-watch"])
    yield broker, ctl, agent, port
    for d in (ctl, agent):
        d.kill()
    broker.stop()


def matches(ctl, address: str, at: int) -> list[dict]:
    when = dt.datetime.fromtimestamp(at, dt.UTC).isoformat()
    return ctl.ctl_json("whois", address, "--at", when)["matches"]


def test_agent_sessions_reach_the_controllers_whois_once(env):
    broker, ctl, agent, port = env
    ctl.start()
    agent.start()
    assert radclient(port, acct("Start", "S1", Event_Timestamp=T0)).returncode == 0
    m = wait_for(lambda: matches(ctl, "203.0.113.7", T0 + 60), 30, what="S1 at the controller")
    assert [x["customer"] for x in m] == ["c1001"]
    assert m[0]["session"]["nas"].startswith(f"{AGENT}:"), m
    assert not m[0]["session"].get("login")             # the login stays on the agent
    assert radclient(port, acct("Stop", "S1", Event_Timestamp=T0 + 3600, Acct_Session_Time=3600)).returncode == 0

    def stopped():
        s = ctl.ctl_json("sessions", "--customer", "c1001")["sessions"]
        return s if s and s[0]["stop"] == T0 + 3600 else None
    wait_for(stopped, 30, what="S1 stopped at the controller")
    assert matches(ctl, "203.0.113.7", T0 + 7200) == []

    # a second session; the agent crashes and comes back: its live sessions are sent again,
    # and the controller keeps one record (idempotent)
    assert radclient(port, acct("Start", "S2", ip="203.0.113.8", Event_Timestamp=T0 + 8000)).returncode == 0
    wait_for(lambda: matches(ctl, "203.0.113.8", T0 + 8100), 30, what="S2 at the controller")
    agent.signal(signal.SIGKILL)
    agent.proc.wait()
    again = DaemonProcess(agent.workdir, policies=agent.policies, extra_args=agent.extra_args).start()
    env_sent = lambda: again.metric("nocpolicy_fleet_sessions_sent_total") or 0  # noqa: E731
    wait_for(lambda: env_sent() >= 1, 30, what="the restarted agent resent its live sessions")
    rows = [s for s in ctl.ctl_json("sessions", "--customer", "c1001")["sessions"] if s["session_id"] == "S2"]
    assert len(rows) == 1 and rows[0]["stop"] is None, rows
    assert ctl.metric("nocpolicy_sessions_duplicate_stops_total") in (0, None)
    again.kill()


def test_a_stop_queued_while_the_broker_is_away_survives_an_agent_crash(env):
    broker, ctl, agent, port = env
    ctl.start()
    agent.start()
    assert radclient(port, acct("Start", "S3", ip="203.0.113.9", Event_Timestamp=T0)).returncode == 0
    wait_for(lambda: matches(ctl, "203.0.113.9", T0 + 60), 30, what="S3 at the controller")
    links = ctl.metric("nocpolicy_mqtt_connects_total")
    broker.stop()                                       # the broker goes away; S3 ends meanwhile
    assert radclient(port, acct("Stop", "S3", ip="203.0.113.9", Event_Timestamp=T0 + 600,
                                Acct_Session_Time=600)).returncode == 0
    wait_for(lambda: agent.metric("nocpolicy_fleet_sessions_kept") == 1, 30, what="the stop kept in the store")
    agent.signal(signal.SIGKILL)                        # and the agent crashes before the broker is back
    agent.proc.wait()
    broker.start()
    # The controller's session is clean: the broker keeps nothing for it while it is away, so the
    # restarted agent must not resend before the controller has subscribed again (its reconnect
    # backoff, after a long outage on a busy machine, can outlast the agent's restart; docs/mqtt.md).
    wait_for(lambda: ctl.metric("nocpolicy_mqtt_connects_total") > links, 60, what="the controller back on the broker")
    again = DaemonProcess(agent.workdir, policies=agent.policies, extra_args=agent.extra_args).start()

    def stopped():
        s = [x for x in ctl.ctl_json("sessions", "--customer", "c1001")["sessions"] if x["session_id"] == "S3"]
        return s if s and s[0]["stop"] == T0 + 600 else None
    try:
        wait_for(stopped, 60, what="S3 stopped at the controller after the agent's restart")
        assert matches(ctl, "203.0.113.9", T0 + 1200) == []
        wait_for(lambda: again.metric("nocpolicy_fleet_sessions_kept") == 0, 30, what="the kept stop cleared once sent")
    finally:
        again.kill()
