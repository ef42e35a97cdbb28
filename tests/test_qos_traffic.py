"""End to end on the real kernel: sender -> router (nocpolicyd enforcing on its egress) -> receiver.

Namespaces (random suffix, deleted in a finalizer)::

    snd: s0 10.99.0.2 + 198.51.100.130 (public-safety customer fire)
    rtr: r0 10.99.0.1 | nocp-down0 10.99.1.1   <- HTB at 10 Mbit/s, nft classification
    rcv: v0 10.99.1.2 + 192.0.2.66 (bulk customer biz), 192.0.2.2 (capped customer home),
                        203.0.113.130 (priority destination)

The real daemon runs with ``--enforce linux --netns rtr``; iperf3 servers run in rcv.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import time

import pytest
import yaml

from conftest import need_root_netns
from helpers import sh, wait_for

pytestmark = pytest.mark.skipif(need_root_netns() is not None, reason=need_root_netns() or "")

LINK = "10mbit"
LINK_BPS = 10_000_000
OFFERED = 2_500_000           # each priority flow offers 2.5 Mbit/s (paced TCP)
FLOOD = 50_000_000          # the ordinary UDP flood (two streams): five times the link
PHASES = [f"{p}{r}" for p in ("before", "before2", "during", "after", "after2") for r in ("", "1")]
PORTS = {"cap": 5200, **{f"{flow}-{phase}": 5201 + 4 * i + j for i, phase in enumerate(PHASES)
                         for j, flow in enumerate(("bulk", "bulk2", "dest", "ps"))}}


@pytest.fixture
def topo():
    sfx = secrets.token_hex(3)
    snd, rtr, rcv = f"qsnd-{sfx}", f"qrtr-{sfx}", f"qrcv-{sfx}"
    servers: list[subprocess.Popen] = []
    try:
        for n in (snd, rtr, rcv):
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", snd, "link", "add", "s0", "type", "veth", "peer", "name", "r0", "netns", rtr)
        sh("ip", "-n", rtr, "link", "add", "nocp-down0", "type", "veth", "peer", "name", "v0", "netns", rcv)
        for n, dev, addrs in ((snd, "s0", ["10.99.0.2/24", "198.51.100.130/32"]),
                              (rtr, "r0", ["10.99.0.1/24"]), (rtr, "nocp-down0", ["10.99.1.1/24"]),
                              (rcv, "v0", ["10.99.1.2/24", "192.0.2.66/32", "192.0.2.2/32", "203.0.113.130/32"])):
            for a in addrs:
                sh("ip", "-n", n, "addr", "add", a, "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", snd, "route", "add", "default", "via", "10.99.0.1")
        sh("ip", "-n", rcv, "route", "add", "default", "via", "10.99.1.1")
        for dst in ("192.0.2.66/32", "192.0.2.2/32", "203.0.113.130/32"):
            sh("ip", "-n", rtr, "route", "add", dst, "via", "10.99.1.2")
        sh("ip", "-n", rtr, "route", "add", "198.51.100.130/32", "via", "10.99.0.2")
        sh("ip", "netns", "exec", rtr, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        for port in PORTS.values():
            servers.append(subprocess.Popen(["ip", "netns", "exec", rcv, "iperf3", "-s", "-J", "-p", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: all(f":{p} " in sh("ip", "netns", "exec", rcv, "ss", "-ltn") for p in PORTS.values()),
                 10, what="iperf3 servers")
        yield {"snd": snd, "rtr": rtr, "rcv": rcv}
    finally:
        for s in servers:
            s.kill()
            s.wait()
        for n in (snd, rtr, rcv):
            sh("ip", "netns", "del", n, check=False)


def make_policies(policy_dir):
    em = yaml.safe_load((policy_dir / "emergency.yaml").read_text())
    em["interfaces"] = [{"name": "nocp-down0", "rate": LINK}]
    prof = em["emergency_profiles"][0]
    prof["priority_share"] = "70%"
    prof["ordinary_floor"] = "20%"
    prof.pop("customer_cap", None)          # bulk keeps its rate: only priority can make room
    prof["priority"]["customers"] = ["c2001"]
    (policy_dir / "emergency.yaml").write_text(yaml.safe_dump(em, allow_unicode=True))
    cu = yaml.safe_load((policy_dir / "customers.yaml").read_text())
    for plan in cu["plans"]:
        if plan["id"] == "home-100m":
            plan["down"], plan["emergency_down"] = "5mbit", "2mbit"
    (policy_dir / "customers.yaml").write_text(yaml.safe_dump(cu, allow_unicode=True))
    return policy_dir


def iperf(snd: str, dst: str, port: int, seconds: float, *, rate: int | None = None, udp: bool = False,
          bind: str | None = None, streams: int = 1, length: int = 1400) -> subprocess.Popen:
    argv = ["ip", "netns", "exec", snd, "iperf3", "-c", dst, "-p", str(port), "-t", str(seconds), "-J"]
    argv += ["-u", "-l", str(length)] if udp else ["--connect-timeout", "3000", "--get-server-output"]
    argv += ["-P", str(streams)]
    if rate:
        argv += ["-b", str(rate)]
    if bind:
        argv += ["-B", bind]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def flood_sent(p: subprocess.Popen) -> float:
    """What the UDP flood managed to send (bit/s); 0 if it failed."""
    try:
        out, _ = p.communicate(timeout=15)
        return json.loads(out)["end"]["sum"]["bits_per_second"]
    except (subprocess.TimeoutExpired, ValueError, KeyError):
        p.kill()
        p.communicate()
        return 0.0


def received(p: subprocess.Popen, *, may_fail: bool = False) -> float:
    """Received bit/s; a starved flow whose control connection gave up counts as 0 when ``may_fail``."""
    try:
        out, _ = p.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        if os.environ.get("QOS_DEBUG"):
            print("iperf3 timed out:", p.args[4:], out[-300:], err[-300:])
        if may_fail:
            return 0.0
        raise
    data = json.loads(out or "{}")
    if os.environ.get("QOS_DEBUG"):
        print("iperf3:", p.args[4:], "->", json.dumps(data.get("end", data))[:400])
    if "error" in data or "end" not in data:
        if may_fail:
            return 0.0
        raise AssertionError(f"iperf3: {data.get('error', out[-300:])}")
    # Bytes the receiver got within the test time, from the server's own 1 s intervals: a starved
    # flow's control connection can be so late that the end-of-test total includes data drained
    # from the send buffer long after the test time (it would look like the full rate).
    intervals = (data.get("server_output_json") or {}).get("intervals") or []
    secs = float(p.args[p.args.index("-t") + 1])
    got = sum(i["sum"]["bytes"] for i in intervals if i["sum"]["end"] <= secs + 0.1)
    return got * 8 / secs


def measure(t, phase: str) -> dict:
    """One phase; repeated once when the machine was too busy to flood the link (shared CI cores)."""
    for attempt in range(2):
        r = _measure(t, f"{phase}{attempt or ''}")
        if r["flood"] >= 3 * LINK_BPS:
            break
    return r


def _measure(t, phase: str) -> dict:
    """A UDP flood (FLOOD, it does not back off) saturates the link; two TCP flows paced at
    12 Mbit/s each (one to a priority destination, one from the public-safety customer) run meanwhile."""
    # two streams of different sizes: a drop-tail FIFO must not phase-lock with one paced flow
    bulk = iperf(t["snd"], "10.99.1.2", PORTS[f"bulk-{phase}"], 5, rate=FLOOD // 2, udp=True, streams=2)
    # The public-safety flow goes to customer biz (192.0.2.66), whose traffic has its own cap class:
    # flood that class too, or the flow would get through on HTB class sharing, not on priority.
    bulk2 = iperf(t["snd"], "192.0.2.66", PORTS[f"bulk2-{phase}"], 5, rate=FLOOD // 4, udp=True, length=700)
    try:
        time.sleep(1.0)
        dest = iperf(t["snd"], "203.0.113.130", PORTS[f"dest-{phase}"], 3, rate=OFFERED)
        ps = iperf(t["snd"], "192.0.2.66", PORTS[f"ps-{phase}"], 3, rate=OFFERED, bind="198.51.100.130")
        starved_ok = not phase.startswith("during")
        return {"dest": received(dest, may_fail=starved_ok), "ps": received(ps, may_fail=starved_ok),
                "flood": flood_sent(bulk) + flood_sent(bulk2)}
    finally:
        for p in (bulk, bulk2):
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_emergency_priority_on_a_saturated_link(topo, daemon, policy_dir):
    d = daemon(policies=make_policies(policy_dir),
               extra_args=["--enforce", "linux", "--netns", topo["rtr"], "--no-watch"])
    st = d.ctl_json("emergency", "status")
    assert st["enforced"] and st["backend"] == "linux" and st["netns"] == topo["rtr"]

    # a capped customer stays at its cap (plan home-100m, made 5 Mbit/s here), even on an idle link
    capped = iperf(topo["snd"], "192.0.2.2", PORTS["cap"], 3)
    # while it runs, the customer shows as at its cap (two readings of the kernel counters)
    wait_for(lambda: "c1001" in d.ctl_json("usage")["over_limit"], 3, interval=0.3, what="c1001 over its cap")
    cap = received(capped)
    assert 2_500_000 < cap <= 5_000_000 * 1.1, cap
    assert d.metric("nocpolicy_customers_over_limit") is not None

    before = measure(topo, "before")
    before2 = measure(topo, "before2")
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "integration test", check=True)
    default_bytes = lambda: next(c["bytes"] for c in d.ctl_json("usage")["classes"]  # noqa: E731
                                 if c["class"] == "default")
    b0 = default_bytes()
    during = measure(topo, "during")
    floor_bytes = default_bytes() - b0
    d.ctl("emergency", "lift", "--reason", "test over", check=True)
    after = measure(topo, "after")
    after2 = measure(topo, "after2")
    unprotected_phases = (before, before2, after, after2)
    report = {k: {f: round(v[f] / 1e6, 2) for f in v} for k, v in
              (("before", before), ("before2", before2), ("during", during), ("after", after),
               ("after2", after2))}
    print("Mbit/s:", report)
    for flow in ("dest", "ps"):
        assert during[flow] >= 0.8 * OFFERED, report       # the requirement, per flow
    # Without an emergency the two flows share a drop-tail FIFO (this kernel has no sfq/fq_codel)
    # with the flood. iperf3 sends UDP in timer bursts, and a paced flow that lines up with the
    # gaps between bursts slips through alone: luck, not QoS, in about one sample in eight here.
    # So the unprotected rate is judged by the median of eight samples (two flows, two phases
    # before and two after the emergency): typically far below the offered rate, while the
    # emergency gives every flow at least 80% every time (checked above, per flow).
    unprotected = [phase[f] for phase in unprotected_phases for f in ("dest", "ps")]
    assert statistics.median(unprotected) < 0.5 * OFFERED, report
    # ordinary traffic kept at least its floor (20% of the link) for the ~5 s of the flood
    assert floor_bytes >= 0.2 * LINK_BPS / 8 * 4, (floor_bytes, report)
    for phase in (*unprotected_phases, during):
        assert phase["flood"] >= 3 * LINK_BPS, f"the machine could not flood the link: {report}"

    usage = d.ctl_json("usage")
    prio = [c for c in usage["classes"] if c["class"] == "priority"]
    assert prio and prio[0]["bytes"] > 1_000_000       # two flows x 2.5 Mbit/s x 3 s went through it
    assert d.metric("nocpolicy_class_bytes_total", {"interface": "nocp-down0", "class": "priority"}) > 1_000_000
    audit = d.ctl_json("audit", "--subject", "emergency:earthquake")["audit"]
    actions = [a["action"] for a in audit]
    assert "emergency.declare" in actions and "emergency.lift" in actions
    declared = next(a for a in audit if a["action"] == "emergency.declare")
    assert "nft priority 203.0.113.128/25 (Tokyo Metropolitan Government disaster portal (documentation "\
           "prefix, see agreement annex 3))" in declared["after"]["rules_added"]
