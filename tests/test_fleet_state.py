"""Fleet state end to end: a real controller and a real agent (with its DNS guard) on a real
mosquitto running the shipped ACL (deploy/container/mosquitto/acl)."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, wait_for
from mosquitto_fixture import Mosquitto, Probe

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_ACL = (ROOT / "deploy/container/mosquitto/acl").read_text()
CONTROLLER, AGENT, OTHER = "edge-tokyo-1", "edge-tokyo-2", "edge-tokyo-3"
CTL_USER = "nocpolicyd"       # the shipped ACL's controller user
USERS = {CTL_USER: "ctl-pw", AGENT: "agent-pw", OTHER: "other-pw", "nocpolicy-monitor": "mon-pw",
         "customer-portal": "portal-pw"}
BLOCKED = "www.bardubar.com"  # in the security list cc: EDE 15 unless the customer opted out

PINNED = """\
  - id: c-pinned
    name: Customer served by edge-tokyo-3 only
    prefixes: [127.0.0.5/32]
    plan: home
    nodes: [edge-tokyo-3]
"""


def policy(tmp: Path, upstream: int) -> Path:
    pol = dns_policy(tmp, upstream)
    (pol / "customers.yaml").write_text((pol / "customers.yaml").read_text() + PINNED)
    s = pol / "settings.yaml"
    s.write_text(re.sub(r"  groups:\n(    .*\n)+", f"  groups:\n    tokyo: [{AGENT}, {OTHER}]\n", s.read_text()))
    d = pol / "dns.yaml"
    d.write_text(d.read_text().replace("dns:\n", "dns:\n  detections_interval: 1s\n", 1))
    return pol


def ede(d: DaemonProcess, name: str, source: str = "127.0.0.1") -> list[int]:
    r = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1", port=d.dns_port,
                      timeout=3, source=source)
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def post(d: DaemonProcess, command: str, args: dict) -> dict:
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/{command}", data=json.dumps(args).encode(),
                                 headers={"Authorization": f"Bearer {d.token()}",
                                          "Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def row(ctl: DaemonProcess, kind: str, node: str = AGENT) -> dict:
    st = ctl.ctl_json("fleet", "status")["state"]
    return next(r for r in st["rows"] if r["node"] == node and r["kind"] == kind)


def converged(ctl: DaemonProcess, kind: str, node: str = AGENT):
    r = row(ctl, kind, node)
    return r if r["state"] == "converged" and r["want"][0] > 0 else None


@pytest.fixture
def env(tmp_path):
    broker = Mosquitto(tmp_path, USERS, SHIPPED_ACL).start()
    ub = Unbound(tmp_path, []).start()
    for d in ("ctl", "agent"):
        (tmp_path / d).mkdir()
    ctl = DaemonProcess(tmp_path / "ctl", policies=policy(tmp_path / "ctl", ub.port),
                        extra_args=broker.daemon_args(CTL_USER) + ["--role", "controller", "--node", CONTROLLER,
                                                                    "--enforce", "off", "--no-watch"])
    agent = DaemonProcess(tmp_path / "agent", policies=policy(tmp_path / "agent", ub.port),
                          extra_args=broker.daemon_args(AGENT) + ["--role", "agent", "--node", AGENT,
                                                                   "--enforce", "off", "--no-watch"])
    yield broker, ctl, agent
    for d in (ctl, agent):
        d.kill()
    ub.stop()
    broker.stop()


def test_optout_and_list_entries_reach_the_agent_acknowledged(env):
    broker, ctl, agent = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "optout") and converged(ctl, "lists"), 60, what="agent converged")
    assert ede(agent, BLOCKED) == [15]

    # an opt-out at the controller flips the agent's DNS answer, and the agent acknowledges it
    before = row(ctl, "optout")["want"][0]
    ctl.ctl("optout", "on", "c-home", "--reason", "portal 4711", check=True)
    wait_for(lambda: ede(agent, BLOCKED) == [], 30, what="agent's answer flipped")
    r = wait_for(lambda: (lambda r: r if r["want"][0] > before else None)(converged(ctl, "optout")), 30,
                 what="opt-out acknowledged")
    assert r["held"] == r["want"]
    assert ctl.metric("nocpolicy_fleet_state_converge_seconds_count", {"kind": "optout"}) >= 1
    assert ede(agent, "csam.example") == [16]        # the mandatory list is never lifted
    lst = {c["customer"]: c for c in agent.ctl_json("optout", "list")["customers"]}
    assert lst["c-home"]["optout"] is True and lst["c-home"]["actor"] == f"mqtt:{CONTROLLER}"

    # the agent refuses to decide opt-outs or list entries itself, naming the controller
    res = agent.ctl("optout", "off", "c-home")
    assert res.returncode != 0 and f"fleet controller {CONTROLLER}" in res.stdout + res.stderr, res
    res = agent.ctl("list-update", "cc", "--add", "x.example")
    assert res.returncode != 0 and CONTROLLER in res.stdout + res.stderr, res

    # list entries pushed at the controller (a feed's list.update) are blocked on the agent
    post(ctl, "list.update", {"list": "cc", "add": ["fleet-new-cc.example"], "reason": "feed"})
    wait_for(lambda: ede(agent, "fleet-new-cc.example", "127.0.0.3") == [15], 30, what="list entry on the agent")
    wait_for(lambda: converged(ctl, "lists"), 30, what="lists acknowledged")
    audit = agent.ctl_json("audit", "--subject", f"node:{AGENT}")["audit"]
    assert any(a["action"] == "fleet.state.apply" and a["after"]["kind"] == "lists" for a in audit)

    # versions keep rising across a controller restart; the agent stays on the same decisions
    held = row(ctl, "optout")["held"][0]
    assert ctl.stop() == 0
    ctl.start()
    r = wait_for(lambda: (lambda r: r if r and r["held"][0] > held else None)(converged(ctl, "optout")), 60,
                 what="converged after the controller restarted")
    assert ede(agent, BLOCKED) == [] and ede(agent, "fleet-new-cc.example", "127.0.0.3") == [15]
    out = ctl.ctl("fleet", "status")
    assert "state optout version" in out.stdout and "state lists version" in out.stdout, out.stdout


def test_offline_agent_converges_and_never_goes_back(env):
    broker, ctl, agent = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged")
    agent.signal(signal.SIGKILL)
    agent.proc.wait()
    for i in range(100):                                 # 100 changes while it is away
        post(ctl, "optout.set", {"customer": "c-home", "on": i % 2 == 0, "reason": f"change {i}"})
    final = ctl.ctl_json("optout", "list")
    want = next(c for c in final["customers"] if c["customer"] == "c-home")["optout"]
    assert want is False                                 # the 100th change (i = 99) turned it off
    again = DaemonProcess(agent.workdir, policies=agent.policies, extra_args=agent.extra_args)
    again.start()
    try:                                                 # the fixture stops only the first agent
        env_agent = again
        wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged after reconnecting")
        # the guard's view follows the ack through the subscribers push: allow it a moment on a busy machine
        wait_for(lambda: ede(env_agent, BLOCKED) == [15], 30, what="the agent blocks again (latest state: on)")
        st = env_agent.ctl_json("fleet", "status")["state"]
        assert st["held"]["optout"]["fleet"] == row(ctl, "optout")["want"][0]
        # the versions it applied only ever rose, across the restart too
        audit = env_agent.ctl_json("audit", "--subject", f"node:{AGENT}", "--limit", "1000")["audit"]
        seq = [v for a in reversed(audit) if a["action"] == "fleet.state.apply" and a["after"]["kind"] == "optout"
               and a["after"]["scope"] == "fleet" for v in a["after"]["versions"]]
        assert seq == sorted(seq) and len(set(seq)) == len(seq), seq
    finally:
        again.kill()


def test_bad_state_is_refused_and_the_last_good_state_kept(env):
    broker, ctl, agent = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged")
    ctl.ctl("optout", "on", "c-home", check=True)
    wait_for(lambda: ede(agent, BLOCKED) == [], 30, what="opted out on the agent")
    v = row(ctl, "optout")["want"][0]
    forger = Probe(broker, CTL_USER)          # the ACL lets only the controller's user write state
    snap = "nocpolicy/v1/fleet/optout/snap"
    mine = f"nocpolicy/v1/nodes/{AGENT}/state/optout/snap"
    head = {"kind": "optout", "scope": "fleet", "node": None, "controller": CONTROLLER, "issued_at": "x"}
    cases = [
        ("old", snap, json.dumps({**head, "version": v - 1, "entries": {}})),
        ("other_node", mine, json.dumps({**head, "scope": "node", "node": OTHER, "version": v + 50,
                                         "entries": {}})),
        ("malformed", snap, "{not json"),
        ("invalid", snap, json.dumps({**head, "version": v + 60, "entries": {"c-home": "maybe"}})),
        ("too_large", snap, " " * ((32 << 20) + 1)),
    ]
    for reason, topic, payload in cases:
        n = agent.metric("nocpolicy_fleet_state_refused_total", {"reason": reason}) or 0
        forger.publish(topic, payload)
        wait_for(lambda r=reason, n=n: (agent.metric("nocpolicy_fleet_state_refused_total", {"reason": r}) or 0)
                 > n, 30, what=f"refused: {reason}")
        assert ede(agent, BLOCKED) == [], reason       # still opted out: the last good state
    assert agent.proc.poll() is None
    assert "fleet state refused (invalid)" in agent.log() and "c-home" in agent.log()
    out = agent.ctl("fleet", "status").stdout
    assert "refused state messages:" in out and "malformed 1" in out, out
    forger.close()


def test_shipped_acl_confines_an_agent_to_its_own_state(env):
    broker, ctl, agent = env
    ctl.start()
    ctl.ctl("optout", "on", "c-pinned", check=True)     # c-pinned is served by edge-tokyo-3 only
    other_snap = f"nocpolicy/v1/nodes/{OTHER}/state/optout/snap"
    other_all = f"nocpolicy/v1/nodes/{OTHER}/state/#"
    mon = Probe(broker, "nocpolicy-monitor").subscribe(f"nocpolicy/v1/nodes/{OTHER}/state/ack")
    owner = Probe(broker, OTHER).subscribe(f"nocpolicy/v1/nodes/{OTHER}/state/+/snap")
    owner.subscribe(f"nocpolicy/v1/nodes/{OTHER}/state/+/delta/+")

    def pinned():
        with owner._lock:
            docs = [json.loads(p) for t, p, _ in owner.messages if "/state/optout/" in t and p]
        return next((d for d in docs if {**d.get("entries", {}), **d.get("set", {})}.get("c-pinned")), None)
    doc = wait_for(pinned, 30, what="edge-tokyo-3 receives its own state")
    assert doc["node"] == OTHER
    spy = Probe(broker, AGENT).subscribe(other_all).subscribe("nocpolicy/v1/fleet/#")
    portal = Probe(broker, "customer-portal").subscribe("nocpolicy/v1/fleet/#").subscribe(other_all)
    wait_for(lambda: spy.find("nocpolicy/v1/fleet/optout/snap"), 20, what="the agent reads the fleet state")
    # an agent may write its own ack, not another node's, and never state
    spy.publish(f"nocpolicy/v1/nodes/{OTHER}/state/ack", json.dumps({"node": OTHER, "held": {}}))
    spy.publish(other_snap, json.dumps({"forged": True}), retain=True)
    owner.publish(f"nocpolicy/v1/nodes/{OTHER}/state/ack", json.dumps({"node": OTHER, "held": {"marker": {}}}))
    mon.wait(f"nocpolicy/v1/nodes/{OTHER}/state/ack", pred=lambda d: "marker" in d["held"])
    assert all("marker" in d["held"] for d in mon.find(f"nocpolicy/v1/nodes/{OTHER}/state/ack"))
    assert not [t for t, _, _ in spy.messages if t.startswith(f"nocpolicy/v1/nodes/{OTHER}/")]  # not its own
    assert not portal.messages                            # a command identity reads no fleet state
    assert all("forged" not in d for d in owner.find(other_snap))
    for p in (mon, owner, spy, portal):
        p.close()


def test_detection_counts_flow_up_to_the_controller_without_client_data(env):
    broker, ctl, agent = env
    ctl.start()
    agent.start()
    mon = Probe(broker, "nocpolicy-monitor").subscribe(f"nocpolicy/v1/nodes/{AGENT}/up/detections")
    for _ in range(3):
        assert ede(agent, BLOCKED) == [15]
    assert ede(agent, "csam.example", "127.0.0.3") == [16]

    def fleet_counts():
        out = ctl.ctl_json("detections", "--fleet")
        rows = {(r["list"], r["customer"]): r for r in out["summary"]}
        return rows if rows.get(("cc", "c-home"), {}).get("count", 0) >= 3 and ("csam", "c-optin") in rows \
            else None
    rows = wait_for(fleet_counts, 60, what="the agent's counts at the controller")
    assert rows[("cc", "c-home")]["nodes"] == {AGENT: rows[("cc", "c-home")]["count"]}
    doc = mon.wait(f"nocpolicy/v1/nodes/{AGENT}/up/detections", pred=lambda d: d["counts"])
    assert set(doc) == {"node", "at", "window_hours", "truncated", "counts"}
    assert all(set(c) == {"list", "class", "customer", "count"} for c in doc["counts"])   # no client, no name
    text = ctl.ctl("detections", "--fleet", "--customer", "c-home").stdout
    assert re.search(rf"cc\s+security\s+c-home\s+\d+\s+{AGENT} \d+", text), text
    res = agent.ctl("detections", "--fleet")
    assert res.returncode != 0 and "fleet controller" in res.stdout + res.stderr
    mon.close()
