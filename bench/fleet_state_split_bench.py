#!/usr/bin/env python3
"""Fleet state snapshots in parts (issue 16): the opt-outs of 1,000,000 customers, measured.

What the controller and an agent do with one full opt-out snapshot of N customers, in this
process (no broker: the broker only stores and forwards the bytes):

* size of the whole snapshot and of its parts at the part size (default 8 MiB, as shipped);
* controller: split + render every part (``statesplit.split`` + the wire encoding);
* agent: parse every part (``parse_state``), assemble (``Assembler``), check and take the whole
  (``Holder.take``);
* peer in the same run: the same snapshot as ONE message (what the agent did before parts
  existed, and what it still does for a snapshot under the part size): render, parse, take.
* memory an agent holds for the entries (tracemalloc of the held dict).

Medians of R runs. Usage: bench/fleet_state_split_bench.py [--customers 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from nocpolicy.clock import SystemClock  # noqa: E402
from nocpolicy.fleet.statectl import StatePublisher  # noqa: E402
from nocpolicy.fleet.statesplit import Assembler  # noqa: E402
from nocpolicy.fleet.statesync import Holder, Out  # noqa: E402
from nocpolicy.fleet.statewire import FLEET, head, parse_state, stream_topics  # noqa: E402
from nocpolicy.fleet.wire import dumps  # noqa: E402

KINDS = ("optout",)


class Store(dict):
    def put(self, k, v):
        self[k] = v


def render(entries: dict, part_size: int) -> list[tuple[str, bytes]]:
    """The controller's own rendering of one snapshot (``StatePublisher._render``)."""
    pub = StatePublisher("noc-central", kinds={}, store=Store(), clock=SystemClock(), publish=None,
                         members=lambda: [], part_size=lambda: part_size)
    return pub._render(Out("optout", FLEET, 7, None, {"entries": entries}), "2026-12-04T19:00:00+00:00")


def take_parts(wire) -> Holder:
    holder, asm = Holder(), Assembler()
    for topic, payload in wire:
        msg = parse_state(topic, payload, "edge-1", KINDS)
        whole, _ = asm.take(msg, 0.0) if msg.parts else (msg, [])
        if whole is not None:
            holder.take(whole)
    return holder


def one_message(entries: dict) -> tuple[float, float, Holder]:
    t = time.perf_counter()
    payload = dumps({**head("optout", FLEET, 7, "noc-central", "x"), "entries": entries})
    rendered = time.perf_counter() - t
    t = time.perf_counter()
    holder = Holder()
    holder.take(parse_state(stream_topics("optout", FLEET, None), payload, "edge-1", KINDS))
    return rendered, time.perf_counter() - t, holder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--part-size", type=int, default=8 << 20)
    a = ap.parse_args()
    entries = {f"c{1_000_000 + i}": i % 3 == 0 for i in range(a.customers)}   # opted out or back in
    whole = len(dumps({**head("optout", FLEET, 7, "noc-central", "x"), "entries": entries}))
    rows = {"split": [], "assemble": [], "peer_render": [], "peer_take": []}
    for _ in range(a.runs):
        t = time.perf_counter()
        wire = render(entries, a.part_size)
        rows["split"].append(time.perf_counter() - t)
        t = time.perf_counter()
        holder = take_parts(wire)
        rows["assemble"].append(time.perf_counter() - t)
        assert holder.effective("optout") == entries
        r, k, peer = one_message(entries)
        rows["peer_render"].append(r)
        rows["peer_take"].append(k)
        assert peer.effective("optout") == entries
    tracemalloc.start()
    held = take_parts(wire)
    mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del held
    sizes = [len(p) for t, p in wire if "/part/" in t] or [len(wire[0][1])]
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{a.customers:,} customers' opt-outs: whole snapshot {whole / 1e6:.1f} MB; at a part size of "
          f"{a.part_size / 2**20:.0f} MiB: {len(sizes)} parts of {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB")
    print(f"controller, split + render the parts   median {med['split'] * 1000:7.0f} ms "
          f"(runs: {', '.join(f'{x * 1000:.0f}' for x in rows['split'])})")
    print(f"peer: render one whole message         median {med['peer_render'] * 1000:7.0f} ms  "
          f"ratio {med['split'] / med['peer_render']:.2f}")
    print(f"agent, parse + assemble + take parts   median {med['assemble'] * 1000:7.0f} ms "
          f"(runs: {', '.join(f'{x * 1000:.0f}' for x in rows['assemble'])})")
    print(f"peer: parse + take one whole message   median {med['peer_take'] * 1000:7.0f} ms  "
          f"ratio {med['assemble'] / med['peer_take']:.2f}")
    print(f"agent memory for the held entries (tracemalloc, after assembling): {mem / 1e6:.0f} MB "
          f"({mem / a.customers:.0f} bytes per customer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
