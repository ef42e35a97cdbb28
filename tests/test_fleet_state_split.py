"""Fleet state on a real mosquitto (the shipped ACL): snapshots larger than the part size travel in
parts and are applied whole; a missing part leaves the agent on its last good state (issue 16)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from dns_fixtures import Unbound
from helpers import DaemonProcess, wait_for
from mosquitto_fixture import Mosquitto, Probe
from test_fleet_state import (
    AGENT,
    CONTROLLER,
    CTL_USER,
    OTHER,
    SHIPPED_ACL,
    USERS,
    converged,
    ede,
    policy,
    post,
    row,
)

NAMES = [f"split-{i:04d}.cc.example" for i in range(200)]     # about 6 KB of list entries


def split_policy(tmp, upstream: int):
    pol = policy(tmp, upstream)
    s = pol / "settings.yaml"
    s.write_text(re.sub(r"(  groups:\n(?:    .*\n)+)", r"\1  state_part_size: 1KiB\n  state_part_wait: 2s\n",
                        s.read_text()))
    return pol


@pytest.fixture
def fleet(tmp_path):
    broker = Mosquitto(tmp_path, USERS, SHIPPED_ACL).start()
    ub = Unbound(tmp_path, []).start()
    daemons = {}
    for name, user, role in (("ctl", CTL_USER, "controller"), ("agent", AGENT, "agent")):
        (tmp_path / name).mkdir()
        node = CONTROLLER if role == "controller" else user
        daemons[name] = DaemonProcess(tmp_path / name, policies=split_policy(tmp_path / name, ub.port),
                                      extra_args=broker.daemon_args(user) + ["--role", role, "--node", node,
                                                                             "--enforce", "off", "--no-watch"])
    yield broker, daemons
    for d in daemons.values():
        d.kill()
    ub.stop()
    broker.stop()


def retained_parts(broker, newer_than: int, kind: str = "lists") -> dict:
    """The parts of the fleet-wide snapshot of ``kind`` the broker holds (a fresh subscription), once
    its snapshot is newer than ``newer_than``."""
    p = Probe(broker, AGENT).subscribe(f"nocpolicy/v1/fleet/{kind}/#")
    try:
        snap = wait_for(lambda: [d for d in p.find(f"nocpolicy/v1/fleet/{kind}/snap") if d["version"] > newer_than],
                        30, what="the new snapshot")[-1]
        n = snap.get("parts", 0)
        topics = [f"nocpolicy/v1/fleet/{kind}/part/{i}" for i in range(n)]
        wait_for(lambda: all(p.find(t) for t in topics), 20, what=f"{n} retained parts")
        with p._lock:
            parts = {int(t.rsplit("/", 1)[1]): json.loads(x) for t, x, _ in p.messages if "/part/" in t and x}
        return {"head": snap, **parts}
    finally:
        p.close()


def test_a_large_snapshot_travels_in_parts_and_is_applied_whole(fleet):
    broker, d = fleet
    ctl, agent = d["ctl"], d["agent"]
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "lists"), 60, what="agent converged")
    post(ctl, "list.update", {"list": "cc", "add": NAMES, "reason": "feed"})
    wait_for(lambda: ede(agent, NAMES[-1], "127.0.0.3") == [15], 30, what="the agent blocks the new entries")
    before = row(ctl, "lists")["want"][0]
    ctl.stop()                     # a controller (re)start publishes every stream whole: in parts now
    ctl.start()
    got = retained_parts(broker, before)
    n = got["head"]["parts"]
    assert n >= 5 and got["head"]["count"] == len(NAMES) and "entries" not in got["head"]
    assert {got[i]["version"] for i in range(n)} == {got["head"]["version"]} and got["head"]["version"] > before
    assert all(len(json.dumps(got[i]["entries"], separators=(",", ":"))) <= 1024 for i in range(n))
    wait_for(lambda: (lambda r: r and r["want"][0] > before)(converged(ctl, "lists")), 30,
             what="the agent holds the split snapshot")
    assert f"entries assembled from {n} parts" in agent.log()
    assert ede(agent, NAMES[0], "127.0.0.3") == [15] and ede(agent, NAMES[-1], "127.0.0.3") == [15]

    # a node that starts from nothing (its store lost) takes the whole state from the retained parts
    agent.kill()
    shutil.rmtree(agent.state_dir)
    log_from = len(agent.log())
    agent.start()
    wait_for(lambda: ede(agent, NAMES[100], "127.0.0.3") == [15], 60, what="a fresh agent took the parts")
    assert f"entries assembled from {n} parts" in agent.log()[log_from:]

    # a smaller snapshot later: the parts of the larger one are cleared from the broker
    post(ctl, "list.update", {"list": "cc", "remove": NAMES[40:], "reason": "feed"})
    mid = row(ctl, "lists")["want"][0]
    ctl.stop()
    ctl.start()
    wait_for(lambda: (lambda r: r and r["want"][0] > mid)(converged(ctl, "lists")), 60, what="converged")
    got = retained_parts(broker, mid)
    assert set(got) == {"head", *range(got["head"]["parts"])} and got["head"]["parts"] < n
    assert ede(agent, NAMES[-1], "127.0.0.3") == [] and ede(agent, NAMES[0], "127.0.0.3") == [15]


def test_a_missing_part_leaves_the_last_good_state_and_is_counted(fleet):
    broker, d = fleet
    ctl, agent = d["ctl"], d["agent"]
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "lists"), 60, what="agent converged")
    v = row(ctl, "lists")["want"][0]
    forged = ["forged-0.cc.example", "forged-1.cc.example", "forged-2.cc.example"]
    head = {"kind": "lists", "scope": "fleet", "node": None, "controller": CONTROLLER, "issued_at": "x"}
    forger = Probe(broker, CTL_USER)          # the ACL lets only the controller's user write state

    def part(i: int, version: int) -> str:
        return json.dumps({**head, "version": version, "part": i, "parts": 3, "count": 3,
                           "entries": {f"cc/{forged[i]}": True}})
    forger.publish("nocpolicy/v1/fleet/lists/part/0", part(0, v + 100))
    forger.publish("nocpolicy/v1/fleet/lists/part/2", part(2, v + 99))      # another version: never mixed in
    forger.publish("nocpolicy/v1/fleet/lists/part/1", part(1, v + 100))     # part 2 of v + 100 never comes
    wait_for(lambda: agent.metric("nocpolicy_fleet_state_refused_total", {"reason": "incomplete"}) == 1, 30,
             what="the incomplete snapshot refused")
    st = agent.ctl_json("fleet", "status")["state"]
    assert st["held"]["lists"]["fleet"] == v and st["refused"]["incomplete"] == 1
    assert "2 of 3 parts arrived (missing 2)" in agent.log()
    assert all(ede(agent, n, "127.0.0.3") == [] for n in forged)            # nothing of it applied
    # the controller's next version applies as usual
    post(ctl, "list.update", {"list": "cc", "add": ["after.cc.example"], "reason": "feed"})
    wait_for(lambda: ede(agent, "after.cc.example", "127.0.0.3") == [15], 30, what="the next version applied")
    assert ede(agent, forged[0], "127.0.0.3") == []
    forger.close()


def docs(p: Probe) -> list[dict]:
    with p._lock:
        return [json.loads(x) for t, x, _ in p.messages if x]


def test_a_node_removed_from_the_fleet_has_its_state_cleared_and_is_not_counted(fleet):
    broker, d = fleet
    ctl, agent = d["ctl"], d["agent"]
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged")
    ctl.ctl("optout", "on", "c-pinned", check=True)      # c-pinned is served by edge-tokyo-3 only
    owner = Probe(broker, OTHER).subscribe(f"nocpolicy/v1/nodes/{OTHER}/state/#")
    wait_for(lambda: any({**m.get("entries", {}), **m.get("set", {})}.get("c-pinned") for m in docs(owner)),
             30, what="edge-tokyo-3's own stream holds c-pinned")
    owner.close()
    assert {r["node"] for r in ctl.ctl_json("fleet", "status")["state"]["rows"]} == {AGENT, OTHER}

    s = ctl.policies / "settings.yaml"
    s.write_text(re.sub(r"tokyo: \[.*\]", f"tokyo: [{AGENT}]", s.read_text()))
    assert ctl.ctl_json("reload")["changed"] is True
    wait_for(lambda: f"node(s) {OTHER} left the fleet" in ctl.log(), 60, what="the removed node's state cleared")

    # nothing of edge-tokyo-3's state stays retained on the broker (a marker subscribed after it
    # arrives after every retained message of the first subscription)
    fresh = Probe(broker, OTHER)
    fresh.publish(f"nocpolicy/v1/nodes/{OTHER}/status", json.dumps({"marker": 1}), retain=True)
    fresh.subscribe(f"nocpolicy/v1/nodes/{OTHER}/state/#").subscribe(f"nocpolicy/v1/nodes/{OTHER}/status")
    fresh.wait(f"nocpolicy/v1/nodes/{OTHER}/status", 30)
    assert [t for t, p, _ in fresh.messages if "/state/" in t and p] == []
    fresh.close()

    st = ctl.ctl_json("fleet", "status")["state"]
    assert {r["node"] for r in st["rows"]} == {AGENT} and sum(st["counts"].values()) == len(st["rows"])
    assert OTHER not in ctl.ctl("fleet", "status").stdout
    before = row(ctl, "optout")["want"][0]          # the fleet goes on as before for the others
    ctl.ctl("optout", "on", "c-home", check=True)
    wait_for(lambda: (lambda r: r and r["want"][0] > before)(converged(ctl, "optout")), 30, what="still converging")
