#!/usr/bin/env python3
"""IntMap alone (issue 15): the C type (sessions/_intmap.c) against the Python PyIntMap, the
same operations on the same keys in the same process, alternating, several runs.

Per run and side: ``add`` of N distinct random 64-bit keys (what hash((nas, sid)) gives) into
a map growing from empty, ``get`` of each (hits), ``get`` of N absent keys (misses), ``pop`` of
each. Times are process CPU per operation including the calling Python loop (a bound method
called from a for loop, as the table calls it). Prints the median of each and the C/Python
ratio, and the traced bytes an entry of the filled map (tracemalloc, both sides).

    .venv/bin/python bench/intmap_bench.py --keys 1000000 --runs 5
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
