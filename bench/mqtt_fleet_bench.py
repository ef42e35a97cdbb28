#!/usr/bin/env python3
"""An emergency declared at the controller reaches N simulated agents: time to every acknowledgement.

Set-up (all on 127.0.0.1): a real mosquitto (password file + the ACL of docs/mqtt.md), a real
``nocpolicyd --role controller`` whose policy names N agents, N lightweight agents (aiomqtt,
one event loop in this process) that take their retained plan and acknowledge it like
``nocpolicyd --role agent`` does, and an observer subscribed to every ack.

Each run publishes ``emergency.declare`` (then ``emergency.lift`` on the next run) with the real
``mosquitto_pub`` as the ``noc-controller`` identity, and measures from just before that publish
to each agent's acknowledgement as seen by the observer. Peer in the same run: the same fan-out
published directly by one paho client (no daemon: broker + agents only), the floor any
controller could reach on this machine.

Usage: bench/mqtt_fleet_bench.py [--agents 1000] [--runs 6]
       bench/mqtt_fleet_bench.py --state [--agents 1000] [--runs 7]   fleet state (opt-outs, list
       entries, an offline agent): bench/fleet_state_bench.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import DaemonProcess, copy_policies, wait_for  # noqa: E402
from mosquitto_fixture import Mosquitto, Probe, Swarm, fleet_acl  # noqa: E402

CONTROLLER = "noc-central"


class AckClock:
    """Observer: monotonic arrival time of the first ack of each (node, version)."""

    def __init__(self, broker):
        self.lock = threading.Lock()
        self.seen: dict[int, dict[str, float]] = {}
        self.probe = Probe(broker, "watcher")
        self.probe.c.on_message = self._on
        self.probe.subscribe("nocpolicy/v1/nodes/+/ack")

    def _on(self, c, u, msg) -> None:
        t = time.monotonic()
        if msg.retain or not msg.payload:
            return
        doc = json.loads(msg.payload)
        with self.lock:
            self.seen.setdefault(doc["version"], {}).setdefault(doc["node"], t)

    def count(self, version: int) -> int:
        with self.lock:
            return len(self.seen.get(version, {}))

    def times(self, version: int, t0: float) -> list[float]:
        with self.lock:
            return sorted(t - t0 for t in self.seen.get(version, {}).values())


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(xs: list[float]) -> str:
    return (f"p50 {pct(xs, 50) * 1000:7.1f} ms  p90 {pct(xs, 90) * 1000:7.1f} ms  "
            f"p99 {pct(xs, 99) * 1000:7.1f} ms  max {xs[-1] * 1000:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=20.0, help="per run")
    a = ap.parse_args()
    deadline = time.monotonic() + 110          # the whole script stays under 2 minutes
    sims = [f"sim-{i:04d}" for i in range(a.agents)]
    work = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    users = {CONTROLLER: "ctl-pw", "noc-controller": "noc-pw", "watcher": "w-pw", **{s: "sim-pw" for s in sims}}
    broker = Mosquitto(work, users, fleet_acl(CONTROLLER, readers=["watcher"])).start()
    (work / "ctl").mkdir()
    pol = copy_policies(work / "ctl")
    s = pol / "settings.yaml"
    text = s.read_text()
    head, _, _ = text.partition("  groups:\n")
    s.write_text(head + "  groups:\n    sims: [" + ", ".join(sims) + "]\n")
    ctl = DaemonProcess(work / "ctl", policies=pol, extra_args=broker.daemon_args(CONTROLLER)
                        + ["--role", "controller", "--node", CONTROLLER, "--log-level", "info"])
    swarm = Swarm(broker.port, sims, "sim-pw", connect_concurrency=100)
    clock = None
    try:
        ctl.start()
        t = time.monotonic()
        swarm.start(timeout=60)
        print(f"{a.agents} simulated agents connected in {time.monotonic() - t:.1f}s; mosquitto "
              f"{broker.port}; controller pid {ctl.proc.pid}")
        wait_for(lambda: ctl.metric("nocpolicy_fleet_nodes", {"state": "converged"}) == a.agents, 30,
                 what="initial convergence")
        clock = AckClock(broker)
        peer = Probe(broker, CONTROLLER)
        version = int(ctl.metric("nocpolicy_fleet_plan_version"))
        ours, floor = [], []
        print(f"{'run':>3} {'path':<34} {'all acks':>9}   per-agent ack time")
        for run in range(1, a.runs + 1):
            if time.monotonic() > deadline - 2 * a.timeout:
                print("stopping early: time budget")
                break
            # nocpolicy: command -> controller -> qos plan -> N retained plans -> N acks
            verb = "emergency.declare" if run % 2 else "emergency.lift"
            args = {"profile": "earthquake", "reason": f"bench run {run}"} if run % 2 else {"reason": "bench"}
            version += 1
            t0 = time.monotonic()
            res = broker.pub("noc-controller", f"nocpolicy/v1/cmd/noc-controller/{verb}",
                             json.dumps({"request_id": f"bench-{run}", "args": args}))
            assert res.returncode == 0, res.stderr
            wait_for(lambda v=version: clock.count(v) == a.agents, a.timeout, interval=0.005,
                     what=f"{a.agents} acks of plan {version}")
            xs = clock.times(version, t0)
            ours.append(xs[-1])
            print(f"{run:>3} {'nocpolicyd controller (' + verb + ')':<34} {xs[-1] * 1000:7.1f}ms   {summary(xs)}")
            # peer: the same fan-out straight from one client (broker + agents only)
            pv = 10_000_000 + run
            doc = {"version": pv, "issued_at": "", "controller": "bench", "policy": "-", "emergency": None,
                   "enforcement": None}
            t0 = time.monotonic()
            infos = [peer.c.publish(f"nocpolicy/v1/nodes/{n}/plan", json.dumps({**doc, "node": n}), qos=1,
                                    retain=True) for n in sims]
            wait_for(lambda v=pv: clock.count(v) == a.agents, a.timeout, interval=0.005, what="peer acks")
            del infos
            ys = clock.times(pv, t0)
            floor.append(ys[-1])
            print(f"{run:>3} {'peer: one paho client, no daemon':<34} {ys[-1] * 1000:7.1f}ms   {summary(ys)}")
        print()
        print(f"time until all {a.agents} acks, over {len(ours)} runs:")
        print(f"  nocpolicy controller   median {statistics.median(ours) * 1000:7.1f} ms  "
              f"min {min(ours) * 1000:7.1f}  max {max(ours) * 1000:7.1f}  "
              f"{'OK' if max(ours) <= 2.0 else 'OVER'} (target <= 2000 ms)")
        print(f"  peer (raw fan-out)     median {statistics.median(floor) * 1000:7.1f} ms  "
              f"min {min(floor) * 1000:7.1f}  max {max(floor) * 1000:7.1f}")
        print(f"  controller's own view: nocpolicy_fleet_converge_seconds count "
              f"{ctl.metric('nocpolicy_fleet_converge_seconds_count'):.0f}, "
              f"mean {ctl.metric('nocpolicy_fleet_converge_seconds_sum') / max(1, ctl.metric('nocpolicy_fleet_converge_seconds_count')) * 1000:.1f} ms")
        inside = [line.split("fleet: ", 1)[1] for line in ctl.log().splitlines() if "published to" in line]
        print("  inside the controller (its log): " + "; ".join(x.split(" published to ")[1] for x in inside[1:]))
        peer.close()
        return 0 if max(ours) <= 2.0 else 1
    finally:
        if clock:
            clock.probe.close()
        swarm.stop()
        ctl.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if "--state" in sys.argv[1:2]:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from fleet_state_bench import main as state_main
        sys.exit(state_main())
    sys.exit(main())
