"""Cost of one qos re-render when a session starts, with many live sessions, on the real kernel.

The daemon re-renders at most once per second however many sessions change (docs/qos.md), so
this is the most a RADIUS storm costs qos per second. Runs in a scratch network namespace
(created and deleted here; no traffic). Medians of --runs runs, each a new session for a
customer that had none (one class added, every other class kept):

  * re-render: subjects from the view (policy + live sessions) + static part (class ids of
    the plan in force kept) + plan + render + apply (one tc batch, one ``nft -f``) + read back;
  * peer: plain ``nft -f`` of the same script (what the kernel tool alone needs).

    sudo .venv/bin/python bench/qos_sessions_bench.py [--customers 2000] [--sessions 20000] [--runs 5] [--uploads]

With ``--uploads`` the plans have up caps too: an ifb tree and u32 source filters, whose list
is rewritten whole (make-before-break) when it changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nocpolicy.policy.customers import Customer, Plan
from nocpolicy.policy.emergency import Interface
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.apply import LinuxBackend
from nocpolicy.qos.plan import build_plan, build_static
from nocpolicy.qos.render import render_nft
from nocpolicy.qos.subjects import subjects_of
from nocpolicy.subscribers.live import AddressTable, ClientLookup
from nocpolicy.subscribers.model import Decisions
from nocpolicy.subscribers.view import build_view

REPO = Path(__file__).resolve().parent.parent


def synthetic(n_customers: int):
    base = load_policy(str(REPO / "policies"))
    plan = Plan(id="home", name="Home", down=100_000_000, up=50_000_000, emergency_down=20_000_000)
    customers = tuple(Customer(id=f"d{i:05d}", name=f"bench {i}", plan="home") for i in range(n_customers))
    return dataclasses.replace(base, customers=customers, plans=(plan,),
                               interfaces=(Interface(name="bench0", rate=10_000_000_000),))


def view_of(policy, live: AddressTable):
    v = build_view(policy.customers, "protect", Decisions())
    return dataclasses.replace(v, prefixes=ClientLookup(v.prefixes, live))


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=300)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--uploads", action="store_true", help="upload caps too (ifb, u32 source filters)")
    a = ap.parse_args()
    redirect = "u32" if a.uploads else None
    policy = synthetic(a.customers + a.runs)
    live = AddressTable()
    for i in range(a.sessions):        # every session of the first customers (the last --runs have none)
        live.apply(("+", ((4, 0x64400000 + i, 32),), f"d{i % a.customers:05d}", False))
    ns = f"nocpsb-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "bench0", "type", "veth", "peer", "name", "bench1")
        sh("ip", "-n", ns, "link", "set", "bench0", "up")
        backend = LinuxBackend(ns)
        t = time.monotonic()
        static = build_static(policy, subjects_of(policy, view_of(policy, live)), redirect=redirect)
        backend.apply(build_plan(policy, static=static))
        setup = time.monotonic() - t
        rerender, peer, tc = [], [], []
        for r in range(a.runs):
            live.apply(("+", ((4, 0x64800000 + r, 32),), f"d{a.customers + r:05d}", False))
            t = time.monotonic()
            view = view_of(policy, live)
            static = build_static(policy, subjects_of(policy, view, view.live_addresses()), static, redirect)
            plan = build_plan(policy, static=static)
            res = backend.apply(plan)
            rerender.append(time.monotonic() - t)
            tc.append(res.tc_commands)
            script = render_nft(plan)
            t = time.monotonic()
            sh("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=script)
            peer.append(time.monotonic() - t)
        med = statistics.median
        print(f"qos sessions bench: {a.customers} customers, {a.sessions} live sessions, "
              f"{len(plan.interfaces[0].classes)} HTB classes, {len(plan.up_caps)} upload filters "
              f"({static.up_dropped} past the u32 limit), {a.runs} runs (medians)")
        print(f"  first tree + nft load              : {setup:7.2f} s  (once)")
        print(f"  re-render on a session start       : {med(rerender):7.3f} s  ({med(tc):.0f} tc changes)")
        print(f"  peer: plain nft -f, same script    : {med(peer):7.3f} s  ({len(script) / 1e6:.2f} MB script)")
        print(f"  ratio re-render / peer             : {med(rerender) / med(peer):7.1f}x")
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
