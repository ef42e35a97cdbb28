"""A real agent enforces the controller's plan with the qos Linux backend inside a test namespace."""

from __future__ import annotations

import json

import pytest

from conftest import need_root_netns
from helpers import DaemonProcess, netns_with_veths, sh, wait_for
from mosquitto_fixture import Mosquitto, Probe, fleet_acl

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(need_root_netns() is not None, reason=need_root_netns() or "")]

CONTROLLER, AGENT = "noc-central", "edge-tokyo-1"     # edge-tokyo-1 is in the example policy's groups
PRIORITY = "203.0.113.128/25"                         # the earthquake profile's priority destination


@pytest.fixture
def ns():
    """A namespace holding the example policy's shaped interface (veth nocp-down0)."""
    with netns_with_veths("nocpm", [("nocp-down0", "nocp-peer0")]) as name:
        yield name


def test_agent_applies_emergency_plans_in_the_kernel(tmp_path, ns):
    users = {CONTROLLER: "c-pw", AGENT: "a-pw", "noc-controller": "n-pw"}
    broker = Mosquitto(tmp_path, users, fleet_acl(CONTROLLER, agents=[AGENT])).start()
    (tmp_path / "ctl").mkdir()
    (tmp_path / "agent").mkdir()
    ctl = DaemonProcess(tmp_path / "ctl", extra_args=broker.daemon_args(CONTROLLER)
                        + ["--role", "controller", "--node", CONTROLLER, "--enforce", "off"])
    agent = DaemonProcess(tmp_path / "agent", env={"NOCPOLICY_NETNS": ns},
                          extra_args=broker.daemon_args(AGENT) + ["--role", "agent", "--enforce", "linux"])
    noc = None
    try:
        ctl.start()
        agent.start()

        def row():
            return next(r for r in ctl.ctl_json("fleet", "status")["nodes"] if r["node"] == AGENT)
        r = wait_for(lambda: (lambda r: r if r["state"] == "converged" else None)(row()), 40, what="plan 1")
        assert r["result"] == "applied" and "Linux backend" in r["detail"], r
        assert PRIORITY not in sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nocpolicy")

        noc = Probe(broker, "noc-controller").subscribe("nocpolicy/v1/reply/noc-controller/#")
        noc.publish("nocpolicy/v1/cmd/noc-controller/emergency.declare",
                    json.dumps({"request_id": "e1", "args": {"profile": "earthquake", "reason": "drill"}}))
        assert noc.wait("nocpolicy/v1/reply/noc-controller/e1", 40)["ok"]
        wait_for(lambda: row()["acked"] == 2 and row()["state"] == "converged", 40, what="plan 2 applied")
        nft = sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nocpolicy")
        assert PRIORITY in nft
        assert agent.metric("nocpolicy_fleet_plan_applies_total", {"result": "applied"}) >= 2

        noc.publish("nocpolicy/v1/cmd/noc-controller/emergency.lift",
                    json.dumps({"request_id": "e2", "args": {"reason": "drill over"}}))
        assert noc.wait("nocpolicy/v1/reply/noc-controller/e2", 40)["ok"]
        wait_for(lambda: row()["acked"] == 3 and row()["state"] == "converged", 40, what="plan 3 applied")
        assert PRIORITY not in sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nocpolicy")
    finally:
        if noc:
            noc.close()
        agent.stop()
        ctl.stop()
        broker.stop()
