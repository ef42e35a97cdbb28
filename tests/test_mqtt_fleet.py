"""Fleet: a real controller, a real agent daemon and 200 simulated agents on a real mosquitto."""

from __future__ import annotations

import json
import re
import signal

import pytest

from helpers import DaemonProcess, copy_policies, wait_for
from mosquitto_fixture import Mosquitto, Probe, Swarm, fleet_acl

CONTROLLER = "noc-central"
AGENT = "edge-real-1"
SIMS = [f"sim-{i:03d}" for i in range(200)]


def fleet_policies(dest, nodes):
    pol = copy_policies(dest)
    s = pol / "settings.yaml"
    text = s.read_text()
    groups = "  groups:\n    real: [" + AGENT + "]\n    sims: [" + ", ".join(nodes) + "]\n"
    text = re.sub(r"  groups:\n(    .*\n)+", groups, text)
    s.write_text(text)
    return pol


def bump(policies, tag: str) -> None:
    s = policies / "settings.yaml"
    s.write_text(re.sub(r'provider: ".*"', f'provider: "Example Net KK / NOC {tag}"', s.read_text()))


def fleet(ctl: DaemonProcess) -> dict:
    return ctl.ctl_json("fleet", "status")


def converged(ctl: DaemonProcess, version: int, n: int):
    f = fleet(ctl)
    return f if f["version"] == version and f["counts"]["converged"] == n else None


@pytest.fixture
def fleet_env(tmp_path):
    users = {CONTROLLER: "ctl-pw", AGENT: "agent-pw", "watcher": "w-pw", "noc-controller": "noc-pw",
             **{s: "sim-pw" for s in SIMS}}
    broker = Mosquitto(tmp_path, users, fleet_acl(CONTROLLER, readers=["watcher"], agents=[AGENT, *SIMS])).start()
    (tmp_path / "ctl").mkdir()
    (tmp_path / "agent").mkdir()
    pol = fleet_policies(tmp_path / "ctl", SIMS)
    # --no-watch: the tests reload explicitly after each edit; on a busy machine the file watcher
    # sometimes got there first and the explicit reload then rightly reported "no change".
    ctl = DaemonProcess(tmp_path / "ctl", policies=pol,
                        extra_args=broker.daemon_args(CONTROLLER) + ["--role", "controller", "--node", CONTROLLER,
                                                                      "--no-watch"])
    agent_args = broker.daemon_args(AGENT) + ["--role", "agent", "--node", AGENT, "--enforce", "off"]
    swarm = Swarm(broker.port, SIMS, "sim-pw")
    started = []
    yield broker, ctl, agent_args, swarm, started
    swarm.stop()
    for d in [ctl, *started]:
        if d.proc and d.proc.poll() is None:
            d.kill()
    broker.stop()


def test_200_agents_and_a_real_one_converge_and_the_agent_reconverges_after_restart(fleet_env, tmp_path):
    broker, ctl, agent_args, swarm, started = fleet_env
    ctl.start()
    swarm.start()
    agent = DaemonProcess(tmp_path / "agent", extra_args=agent_args).start()
    started.append(agent)
    total = len(SIMS) + 1

    f = wait_for(lambda: converged(ctl, 1, total), 30, what="201 nodes converged on plan 1")
    assert f["counts"] == {"converged": total, "pending": 0, "failed": 0, "offline": 0}
    real = next(r for r in f["nodes"] if r["node"] == AGENT)
    assert real["result"] == "recorded" and "--enforce off" in real["detail"]
    assert ctl.metric("nocpolicy_fleet_nodes", {"state": "converged"}) == total

    # a policy change at the controller: plan 2 reaches everyone, convergence is timed
    bump(ctl.policies, "v2")
    assert ctl.ctl_json("reload")["changed"] is True
    wait_for(lambda: converged(ctl, 2, total), 30, what="converged on plan 2")
    assert ctl.metric("nocpolicy_fleet_converge_seconds_count") >= total
    assert ctl.metric("nocpolicy_fleet_converge_seconds_bucket", {"le": "+Inf"}) >= total
    assert all(2 in swarm.received[s] for s in SIMS)
    out = ctl.ctl("fleet", "status")
    assert out.returncode == 0 and f"{total} node(s): {total} converged" in out.stdout, out.stdout
    plan = agent.ctl_json("fleet", "status")["plan"]
    assert plan["version"] == 2 and plan["result"] == "recorded"

    # the real agent dies; its last will marks it offline; plan 3 is issued while it is down
    agent.signal(signal.SIGKILL)
    agent.proc.wait()
    wait_for(lambda: fleet(ctl)["counts"]["offline"] == 1, 30, what="agent offline")
    bump(ctl.policies, "v3")
    assert ctl.ctl_json("reload")["changed"] is True
    wait_for(lambda: converged(ctl, 3, total - 1), 30, what="sims converged on plan 3")
    out = ctl.ctl("fleet", "status")
    assert out.returncode == 1 and re.search(rf"{AGENT}\s+offline\s+3\s+2\b", out.stdout), out.stdout
    assert "1 node(s) lag behind plan version 3" in out.stdout

    # restarted, it takes the retained plan 3 and acknowledges it
    again = DaemonProcess(tmp_path / "agent", policies=agent.policies, extra_args=agent_args)
    again.state_dir = agent.state_dir
    again.start()
    started.append(again)
    wait_for(lambda: converged(ctl, 3, total), 30, what="agent reconverged on plan 3")
    assert again.metric("nocpolicy_fleet_plan_applied_version") == 3
    audit = again.ctl_json("audit", "--subject", f"node:{AGENT}")["audit"]
    assert [a["after"]["version"] for a in audit][:3] == [3, 2, 1]
    assert audit[0]["actor"] == f"mqtt:{CONTROLLER}"

    # a restarted controller keeps its plan version (same content) and sees the fleet converged
    assert ctl.stop() == 0
    ctl.start()
    f = wait_for(lambda: converged(ctl, 3, total), 30, what="restarted controller sees convergence")
    assert ctl.metric("nocpolicy_fleet_plan_version") == 3


def test_agent_refuses_a_plan_for_another_node_and_reports_it(fleet_env, tmp_path):
    broker, ctl, agent_args, swarm, started = fleet_env
    ctl.start()
    agent = DaemonProcess(tmp_path / "agent", extra_args=agent_args).start()
    started.append(agent)
    wait_for(lambda: next(r for r in fleet(ctl)["nodes"] if r["node"] == AGENT)["state"] == "converged", 40,
             what="agent converged")
    watcher = Probe(broker, "watcher").subscribe(f"nocpolicy/v1/nodes/{AGENT}/ack")
    forger = Probe(broker, CONTROLLER)     # the broker ACL lets only the controller user write plans
    forger.publish(f"nocpolicy/v1/nodes/{AGENT}/plan", json.dumps({"version": 99, "node": "elsewhere"}),
                     retain=True)
    ack = watcher.wait(f"nocpolicy/v1/nodes/{AGENT}/ack", pred=lambda a: a["version"] == 99)
    assert ack["result"] == "failed" and "plan is for 'elsewhere', this node is 'edge-real-1'" in ack["detail"]
    assert agent.proc.poll() is None
    assert agent.metric("nocpolicy_fleet_plan_applies_total", {"result": "failed"}) == 1
    row = wait_for(lambda: (lambda r: r if r["state"] == "pending" else None)(
        next(r for r in fleet(ctl)["nodes"] if r["node"] == AGENT)), 30, what="controller sees pending")
    assert row["acked"] == 99
    # the next controller publish (here: a reload) puts the right plan back
    bump(ctl.policies, "fix")
    ctl.ctl("reload", check=True)
    wait_for(lambda: next(r for r in fleet(ctl)["nodes"] if r["node"] == AGENT)["state"] == "converged", 40,
             what="agent back on the controller's plan")
    watcher.close()
    forger.close()


def test_emergency_declared_over_mqtt_reaches_every_agent(fleet_env, tmp_path):
    broker, ctl, agent_args, swarm, started = fleet_env
    ctl.start()
    swarm.start()
    agent = DaemonProcess(tmp_path / "agent", extra_args=agent_args).start()
    started.append(agent)
    total = len(SIMS) + 1
    wait_for(lambda: converged(ctl, 1, total), 30, what="converged on plan 1")
    noc = Probe(broker, "noc-controller").subscribe("nocpolicy/v1/reply/noc-controller/#")
    watcher = Probe(broker, "watcher").subscribe("nocpolicy/v1/events/emergency")
    noc.publish("nocpolicy/v1/cmd/noc-controller/emergency.declare",
                json.dumps({"request_id": "eq-1", "args": {"profile": "earthquake", "reason": "M7 drill"}}))
    r = noc.wait("nocpolicy/v1/reply/noc-controller/eq-1", 40)
    assert r["ok"], r
    assert watcher.wait("nocpolicy/v1/events/emergency")["action"] == "declare"
    f = wait_for(lambda: converged(ctl, 2, total), 30, what="every agent acknowledged the emergency plan")
    assert f["counts"]["converged"] == total
    # the plan carries the qos enforcement plan with the emergency; the real agent validated it
    plan = agent.ctl_json("fleet", "status")["plan"]
    assert plan["version"] == 2 and plan["result"] == "recorded"
    retained = Probe(broker, "watcher").subscribe("nocpolicy/v1/nodes/sim-007/plan")
    doc = retained.wait("nocpolicy/v1/nodes/sim-007/plan")
    assert doc["version"] == 2 and doc["node"] == "sim-007" and doc["controller"] == CONTROLLER
    assert doc["emergency"]["profile"] == "earthquake" and doc["emergency"]["reason"] == "M7 drill"
    assert doc["enforcement"]["format"] == "nocpolicy.qos.plan/1"
    assert doc["enforcement"]["emergency"]["profile"] == "earthquake"
    retained.close()
    audit = ctl.ctl_json("audit", "--limit", "50")["audit"]
    assert any(a["actor"] == "mqtt:noc-controller" and "emergency" in a["action"] for a in audit)
    noc.publish("nocpolicy/v1/cmd/noc-controller/emergency.lift",
                json.dumps({"request_id": "eq-2", "args": {"reason": "drill over"}}))
    assert noc.wait("nocpolicy/v1/reply/noc-controller/eq-2", 40)["ok"]
    wait_for(lambda: converged(ctl, 3, total), 30, what="every agent acknowledged the lift")
    noc.close()
    watcher.close()
