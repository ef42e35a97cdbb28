"""A suspension decided at the fleet controller, enforced by an agent for real: nftables and tc in
namespaces with real traffic. customer -> router (the agent: DNS guard, notice page, nft, tc;
beside it the controller and mosquitto, all inside the router namespace) -> web."""

from __future__ import annotations

import json
import subprocess

import yaml

from helpers import free_port, sh, wait_for
from mosquitto_fixture import MOSQUITTO, Mosquitto, fleet_acl
from test_suspension_nft import (  # noqa: F401 (topo: fixture)
    SUSPENSION,
    RouterDaemon,
    download_speed,
    fetch,
    pytestmark_netns,
    topo,
)

CONTROLLER, AGENT = "noc-central", "edge-tokyo-1"       # c1001 (192.0.2.0/26) is served by edge-tokyo-1
URGENT = ["--urgent", "--justification", "third reminder unanswered"]


def broker_in(ns: str, tmp) -> Mosquitto:
    b = Mosquitto(tmp, {CONTROLLER: "ctl-pw", AGENT: "agent-pw"}, fleet_acl(CONTROLLER, agents=[AGENT]))
    b.proc = subprocess.Popen(["ip", "netns", "exec", ns, MOSQUITTO, "-c", str(b.conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for(lambda: f"127.0.0.1:{b.port} " in sh("ip", "netns", "exec", ns, "ss", "-ltn"), 30,
             what="mosquitto in the router namespace")
    return b


def converged(ctl: RouterDaemon, than: int = 0) -> dict | None:
    out = ctl.ctl("fleet", "status")
    rows = json.loads(out.stdout)["state"]["rows"] if out.stdout.startswith("{") else []
    r = next((r for r in rows if r["node"] == AGENT and r["kind"] == "suspension"), None)
    return r if r and r["state"] == "converged" and r["held"][0] + r["held"][1] > than else None


def version(r: dict) -> int:
    return r["held"][0] + r["held"][1]


def classes(rtr: str) -> str:
    return sh("ip", "netns", "exec", rtr, "tc", "class", "show", "dev", "nocp-down0")


@pytestmark_netns
def test_the_agent_enforces_the_controllers_suspensions_in_nftables_and_tc(topo, tmp_path):  # noqa: F811
    cust, rtr = topo["cust"], topo["rtr"]
    broker = broker_in(rtr, tmp_path)
    mqtt = f"mqtt://%s@127.0.0.1:{broker.port}"
    procs = []
    try:
        ctl = RouterDaemon(tmp_path / "ctl", rtr, dns_listen="127.0.0.1:5353", extra_args=(
            "--enforce", "off", "--role", "controller", "--node", CONTROLLER, "--mqtt", mqtt % CONTROLLER,
            "--mqtt-password-file", str(broker.password_file(CONTROLLER))))
        page = {**SUSPENSION["suspension"], "notice_page": {"listen": f"127.0.0.1:{free_port()}"}}
        (ctl.policies / "suspension.yaml").write_text(yaml.safe_dump({"suspension": page}))   # the agent's: .1:80
        procs.append(ctl.start())
        agent = RouterDaemon(tmp_path / "agent", rtr, extra_args=(
            "--role", "agent", "--node", AGENT, "--mqtt", mqtt % AGENT,
            "--mqtt-password-file", str(broker.password_file(AGENT)))).start()
        procs.append(agent)
        v = version(wait_for(lambda: converged(ctl), 60, what="the agent converged"))
        assert "REAL TEST SITE" in (fetch(cust, "http://203.0.113.50/") or "")

        r = ctl.ctl("suspend", "c1001", "--cause", "nonpayment", "--mode", "walled-garden", "--reason",
                    "invoice 2026-02 unpaid", *URGENT)
        assert r.returncode == 0, r.stderr
        # the agent drops the customer's forwarded traffic (its nft table), but for the payment site,
        # and its DNS guard and notice page show the controller's reason
        wait_for(lambda: fetch(cust, "http://203.0.113.50/", timeout=2) is None, 30, what="dropped on the agent")
        assert "PAYMENT SITE" in (fetch(cust, "http://203.0.113.60/") or "")
        page = fetch(cust, "http://site.test/whatever")
        assert page is not None and "invoice 2026-02 unpaid" in page, page
        drops = sh("ip", "netns", "exec", rtr, "nft", "list", "table", "inet", "nocpolicy_suspend")
        assert "192.0.2.0/26" in drops
        v = version(wait_for(lambda: converged(ctl, v), 30, what="acknowledged"))
        refused = agent.ctl("resume", "c1001")
        assert refused.returncode != 0 and f"fleet controller {CONTROLLER}" in refused.stdout + refused.stderr

        assert ctl.ctl("resume", "c1001", "--reason", "paid").returncode == 0
        wait_for(lambda: "REAL TEST SITE" in (fetch(cust, "http://site.test/") or ""), 30, what="lifted")

        # throttle: the agent's qos moves the customer into a 1 Mbit/s cap class, and out again
        r = ctl.ctl("suspend", "c1001", "--cause", "obligations", "--mode", "throttle", "--rate", "1mbit",
                    "--reason", "fair use", *URGENT)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "ceil 1Mbit" in classes(rtr), 30, what="a 1 Mbit/s cap class on the agent")
        assert "REAL TEST SITE" in (fetch(cust, "http://site.test/") or "")
        speed = download_speed(cust, "http://203.0.113.50/big.bin")
        assert speed <= 1.3 * 1_000_000 / 8, f"{speed * 8 / 1e6:.2f} Mbit/s through a 1 Mbit/s throttle"
        assert ctl.ctl("resume", "c1001").returncode == 0
        wait_for(lambda: "ceil 1Mbit" not in classes(rtr), 30, what="the throttle lifted on the agent")
    finally:
        for d in reversed(procs):
            d.stop()
        broker.stop()
