#!/usr/bin/env python3
"""The accounting listener's CPU per request without I/O (issue 15), this tree against a base
checkout, alternating, in fresh processes pinned to one CPU.

Each child decodes (pyrad), interprets and books N distinct pyrad-encoded Starts through a
real AccountingProtocol into a real GroupCommit's batch (answers run every 100 requests; no
store write, no socket): the part of the ingest path that the end-to-end bench
(``sessions_bench.py --parts ingest``) measures together with SQLite, the event loop and the
sends. Prints the median process CPU per request of each side and the ratio.

    .venv/bin/python bench/ingest_path_bench.py --base /tmp/main-copy --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, gc, ipaddress, re, sys, time
root, n = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, root + "/daemon")
from pyrad import packet as rp
import nocpolicy
assert nocpolicy.__file__.startswith(root), nocpolicy.__file__
from nocpolicy.policy.sessions import CustomerFrom, RadiusClient, RadiusSettings
from nocpolicy.sessions.accounting import AccountingProtocol
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.commit import GroupCommit
from nocpolicy.sessions.radius import dictionary
from nocpolicy.sessions.table import LiveTable
d = dictionary()
pkts = []
for k in range(n):
    p = rp.AcctPacket(id=k % 256, secret=b"s", dict=d)
    p["Acct-Status-Type"] = 1
    p["Acct-Session-Id"] = f"G{k}"
    p["User-Name"] = f"u{k}@isp.example"
    p["NAS-Identifier"] = "bng1"
    p["Framed-IP-Address"] = str(ipaddress.IPv4Address(0x64400000 + k))
    pkts.append(p.RequestPacket())
client = RadiusClient("c1", ipaddress.ip_network("127.0.0.0/8"), "x", b"s")
settings = RadiusSettings(clients=(client,), customer_from=CustomerFrom("User-Name", re.compile("^(?P<id>[^@]+)@")))
class Transport:
    def sendto(self, *a): pass
    def is_closing(self): return False
async def run():
    book = Book(LiveTable())
    book.resolve = lambda x: (x, True)
    book.static_net = lambda f, v: None
    changes = []
    book.on_change = lambda old, new: changes.append(("+", new.addrs, new.customer, new.implicit))
    commit = GroupCommit(lambda ops: None)
    proto = AccountingProtocol(lambda: settings, book, commit, clock=time.time)
    proto.transport = Transport()
    gc.collect()
    t0 = time.process_time()
    for i, data in enumerate(pkts):
        proto.on_datagram(data, "127.0.0.1", ("127.0.0.1", 4000 + i % 4))
        if i % 100 == 99:               # what a group commit does once the batch is durable
            done = commit._done
            commit.ops, commit._done, commit._count = type(commit.ops)(), [], 0
            changes.clear()
            for fn in done:
                fn()
    took = time.process_time() - t0
    assert proto.counts[("start", "ok")] == n, proto.counts
    print(took / n * 1e6)
asyncio.run(run())
"""


def child(root: Path, python: Path, n: int, cpu: int | None) -> float:
    cmd = [str(python), "-c", CHILD, str(root), str(n)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, type=Path, help="a checkout of the base code (its own .venv)")
    ap.add_argument("--requests", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pin", type=int, default=1, help="CPU for the children (-1: not pinned)")
    args = ap.parse_args()
    cpu = None if args.pin < 0 else args.pin
    sides = {"this": (REPO, Path(sys.executable)), "base": (args.base.resolve(), args.base / ".venv/bin/python")}
    got: dict[str, list[float]] = {"this": [], "base": []}
    for run in range(args.runs):
        order = ["this", "base"] if run % 2 == 0 else ["base", "this"]
        for side in order:
            got[side].append(child(*sides[side], args.requests, cpu))
        print(f"  run {run}: this {got['this'][-1]:.1f} us, base {got['base'][-1]:.1f} us a request "
              f"(ratio {got['this'][-1] / got['base'][-1]:.2f})")
    t, b = statistics.median(got["this"]), statistics.median(got["base"])
    ratios = [x / y for x, y in zip(got["this"], got["base"], strict=True)]
    print(f"listener path without I/O: this {t:.1f} us, base {b:.1f} us of CPU a request (medians); "
          f"this/base {t / b:.2f} (median of paired ratios {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
