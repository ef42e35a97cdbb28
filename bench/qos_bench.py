"""Emergency declare/lift time with 50k priority prefixes and 10k capped customers, on the real kernel.

Runs in a scratch network namespace (created and deleted here; no traffic is sent).
Times, medians of --runs runs:
  * declare: build the plan + render + apply (one ``nft -f``) + read back, as the daemon does;
  * lift: the same back to the normal plan;
  * peer: plain ``nft -f`` of the same emergency script (what the kernel tool alone needs).
The static tc tree (20k HTB classes: a normal and an emergency cap per customer) is built
once before and reported separately (it is per policy, not per emergency).

    sudo /tmp/venv/bin/python bench/qos_bench.py [--prefixes 50000] [--customers 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nocpolicy.policy.customers import Customer, Plan
from nocpolicy.policy.emergency import Interface, PriorityDestination
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.apply import LinuxBackend
from nocpolicy.qos.plan import Emergency, build_plan, build_static
from nocpolicy.qos.render import diff_lines, render_nft

REPO = Path(__file__).resolve().parent.parent


def synthetic_policy(n_prefixes: int, n_customers: int):
    base = load_policy(str(REPO / "policies"))
    plan = Plan(id="home", name="Home", down=100_000_000, emergency_down=20_000_000)
    customers = tuple(Customer(id=f"b{i:05d}", name=f"bench {i}", plan="home",
                               prefixes=(ipaddress.ip_network((0x0A000000 + i * 16, 28)),))
                      for i in range(n_customers))
    dests = tuple(PriorityDestination(ipaddress.ip_network((0x0B000000 + i * 256, 24)), f"agency list row {i}")
                  for i in range(n_prefixes))
    profile = dataclasses.replace(base.profiles[0], id="bench", priority_customers=(customers[0].id,),
                                  priority_destinations=dests, customer_cap=10_000_000)
    return dataclasses.replace(base, customers=customers, plans=(plan,), profiles=(profile,),
                               interfaces=(Interface(name="bench0", rate=10_000_000_000),))


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=300)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefixes", type=int, default=50_000)
    ap.add_argument("--customers", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    ns = f"nocpb-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1")
        sh("ip", "-n", ns, "link", "set", "bench0", "up")
        policy = synthetic_policy(a.prefixes, a.customers)
        backend = LinuxBackend(ns)
        t = time.monotonic()
        normal = build_plan(policy)
        r = backend.apply(normal)
        setup = time.monotonic() - t
        n_classes = len(normal.interfaces[0].classes)
        static = build_static(policy)
        declare, lift, peer = [], [], []
        script = None
        for _ in range(a.runs):
            t = time.monotonic()      # what the daemon does: plan, audit diff, render, apply, verify
            plan = build_plan(policy, Emergency("bench", (), "bench"), static=static)
            diff_lines(normal, plan)
            res = backend.apply(plan)
            declare.append(time.monotonic() - t)
            assert res.tc_commands == 0
            t = time.monotonic()
            back = build_plan(policy, static=static)
            diff_lines(plan, back)
            backend.apply(back)
            lift.append(time.monotonic() - t)
            script = script or render_nft(plan)
            t = time.monotonic()
            sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=script)
            peer.append(time.monotonic() - t)
            backend.apply(build_plan(policy, static=static))       # back to normal for the next run
        med = statistics.median
        print(f"qos bench: {a.prefixes} priority prefixes, {a.customers} customers, {n_classes} HTB classes, "
              f"{a.runs} runs (medians)")
        print(f"  static tc tree + first nft load : {setup:7.2f} s  ({r.tc_commands} tc commands, once per policy)")
        print(f"  declare (plan+diff+render+apply)  : {med(declare):7.3f} s   target <= 1 s")
        print(f"  lift    (plan+diff+render+apply)  : {med(lift):7.3f} s")
        print(f"  peer: plain nft -f, same script   : {med(peer):7.3f} s   ({len(script) / 1e6:.1f} MB script)")
        return 0 if med(declare) <= 1.0 else 1
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
