#!/usr/bin/env python3
"""IntMap alone (issue 15): the C type (sessions/_intmap.c) against the Python PyIntMap, the
same operations on the same keys in the same process, alternating, several runs.

Per run and side: ``add`` of N distinct random 64-bit keys (what hash((nas, sid)) gives) into
a map growing from empty, ``get`` of each (hits), ``get`` of N absent keys (misses), ``pop`` of
each. Times are process CPU per operation including the calling Python loop (a bound method
called from a for loop, as the table calls it). Prints the median of each and the C/Python
ratio, and the traced bytes an entry of the filled map (tracemalloc, both sides).

``--table N``: also the live session table itself with either map as its indexes, in fresh
processes (alternating, ``--runs`` each): N sessions (an IPv4 address and a /56 each) put
into a reserved LiveTable, CPU per put and RSS growth per session.

    .venv/bin/python bench/intmap_bench.py --keys 1000000 --runs 5 [--table 1000000]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import subprocess
import sys
import time
import tracemalloc

from nocpolicy.sessions.intmap import IntMap, PyIntMap

OPS = ("add", "get hit", "get miss", "pop")


def one_run(cls, keys: list[int], absent: list[int]) -> dict[str, float]:
    gc.collect()
    m = cls()
    add, get, pop = m.add, m.get, m.pop
    out = {}
    t = time.process_time()
    for v, k in enumerate(keys):
        add(k, v)
    out["add"] = time.process_time() - t
    t = time.process_time()
    for k in keys:
        get(k)
    out["get hit"] = time.process_time() - t
    t = time.process_time()
    for k in absent:
        get(k)
    out["get miss"] = time.process_time() - t
    assert len(m) == len(keys)
    t = time.process_time()
    for k in keys:
        pop(k)
    out["pop"] = time.process_time() - t
    assert len(m) == 0
    return {op: s / len(keys) * 1e9 for op, s in out.items()}


def bytes_an_entry(cls, keys: list[int]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        m = cls()
        for v, k in enumerate(keys):
            m[k] = v
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return used / len(m)


TABLE_CHILD = r"""
import os, sys, time
from nocpolicy.sessions import table as tmod
from nocpolicy.sessions.intmap import IntMap, PyIntMap
tmod.IntMap = IntMap if sys.argv[1] == "c" else PyIntMap
n = int(sys.argv[2])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
t = tmod.LiveTable()
before = rss()
t.reserve(n)
cpu = time.process_time()
for i in range(n):
    addrs = ((4, 0x64400000 + i, 32), (6, (0x20010DB8 << 96) | (i << 72), 56))
    t.put(i + 1, "radius", "bng1", f"S{i:08x}", f"c{i}", addrs, 1.0, 1.0, 300.0, False, new_key=True)
cpu = time.process_time() - cpu
assert len(t) == n
print((rss() - before) / n, cpu / n * 1e6)
"""


def table_part(n: int, runs: int) -> None:
    got: dict[str, list[tuple[float, float]]] = {"c": [], "python": []}
    for run in range(runs):
        for side in (["c", "python"] if run % 2 == 0 else ["python", "c"]):
            out = subprocess.run([sys.executable, "-c", TABLE_CHILD, side, str(n)], check=True,
                                 capture_output=True, text=True, timeout=1200).stdout.split()
            got[side].append((float(out[0]), float(out[1])))
        print(f"  table run {run}: " + ", ".join(
            f"{side} {got[side][-1][0]:.0f} B a session, {got[side][-1][1]:.2f} us a put" for side in got))
    med = {side: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for side, v in got.items()}
    print(f"live table, {n:,} sessions (IPv4 + /56), medians: C {med['c'][0]:.0f} B, {med['c'][1]:.2f} us "
          f"a put; Python {med['python'][0]:.0f} B, {med['python'][1]:.2f} us; C/Python CPU "
          f"{med['c'][1] / med['python'][1]:.2f}, RSS {med['c'][0] / med['python'][0]:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--table", type=int, default=0, help="sessions for the live-table part (0: skip)")
    args = ap.parse_args()
    if IntMap is PyIntMap:
        print("the C extension nocpolicy.sessions._intmap is not built (pip install -e .)")
        return 1
    rnd = random.Random(1)
    keys = list({rnd.getrandbits(64) for _ in range(args.keys)})
    known = set(keys)
    absent = [k for k in (rnd.getrandbits(64) for _ in range(args.keys)) if k not in known]
    sides = {"c": IntMap, "python": PyIntMap}
    got: dict[str, list[dict[str, float]]] = {"c": [], "python": []}
    for run in range(args.runs):
        for side in (["c", "python"] if run % 2 == 0 else ["python", "c"]):
            got[side].append(one_run(sides[side], keys, absent))
        print(f"  run {run}: " + ", ".join(
            f"{op} {got['c'][-1][op]:.0f}/{got['python'][-1][op]:.0f} ns" for op in OPS) + " (C/Python)")
    print(f"{len(keys):,} keys, {args.runs} runs, medians of ns an operation (with the calling loop):")
    for op in OPS:
        c = statistics.median(r[op] for r in got["c"])
        p = statistics.median(r[op] for r in got["python"])
        print(f"  {op:9s} C {c:6.0f}  Python {p:6.0f}  C/Python {c / p:.2f}  (Python/C {p / c:.1f}x)")
    print("traced bytes an entry, filled from empty: " + ", ".join(
        f"{side} {bytes_an_entry(cls, keys):.1f}" for side, cls in sides.items()))
    if args.table:
        table_part(args.table, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
