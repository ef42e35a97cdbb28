#!/usr/bin/env python3
"""Hit ratio of cache eviction policies on a Zipf (s = 1) stream over 200,000 names.

Why the answer cache evicts first-in-first-out: compared with LRU and CLOCK
(second chance) at caches holding 5-50 % of the names, on the same request
stream (independent requests, popularity ~ 1/rank, as in the cache bench). The
cost side: FIFO needs nothing on a hit; LRU moves the entry on every hit (an
OrderedDict ``move_to_end`` on the hot path); CLOCK sets a bit on every hit
(a mutable entry instead of an immutable tuple, +~50 bytes per entry).

    python3 bench/cache_eviction_sim.py [--requests 2000000]
"""

from __future__ import annotations

import argparse
import random
from collections import OrderedDict, deque
from itertools import accumulate


def fifo(stream, cap: int) -> float:
    d: set = set()
    order: deque = deque()
    hits = 0
    for x in stream:
        if x in d:
            hits += 1
            continue
        d.add(x)
        order.append(x)
        if len(d) > cap:
            d.discard(order.popleft())
    return hits / len(stream)


def lru(stream, cap: int) -> float:
    d: OrderedDict = OrderedDict()
    hits = 0
    for x in stream:
        if x in d:
            hits += 1
            d.move_to_end(x)
            continue
        d[x] = True
        if len(d) > cap:
            d.popitem(last=False)
    return hits / len(stream)


def clock(stream, cap: int) -> float:
    ref: dict = {}
    order: deque = deque()
    hits = 0
    for x in stream:
        if x in ref:
            hits += 1
            ref[x] = True
            continue
        while len(ref) >= cap:
            y = order.popleft()
            if ref[y]:
                ref[y] = False
                order.append(y)
            else:
                del ref[y]
        ref[x] = False
        order.append(x)
    return hits / len(stream)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=int, default=200_000)
    p.add_argument("--requests", type=int, default=2_000_000)
    a = p.parse_args()
    rnd = random.Random(19)
    cum = list(accumulate(1.0 / k for k in range(1, a.names + 1)))
    stream = rnd.choices(range(a.names), cum_weights=cum, k=a.requests)
    print(f"Zipf s=1, {a.names} names, {a.requests} requests (hit ratio; cold start included)")
    print(f"{'capacity':>10} {'FIFO':>7} {'CLOCK':>7} {'LRU':>7}")
    for share in (0.05, 0.1, 0.25, 0.5, 1.0):
        cap = int(a.names * share)
        print(f"{share:>9.0%} {fifo(stream, cap):>7.3f} {clock(stream, cap):>7.3f} {lru(stream, cap):>7.3f}")


if __name__ == "__main__":
    main()
