#!/usr/bin/env python3
"""A/B of the DNS engine's query path (no sockets): this tree against another checkout.

Runs the same workload in a fresh process per tree, alternating A and B (ABBA) for
--rounds rounds so that load from other users of the machine hits both alike, and prints the
median rate of each (queries per CPU second) and the ratio. Workloads (Engine.handle, the path every query that
misses the inlined UDP fast paths takes):

  blocked    first query for a blocked name: parse, find the subscriber, judge, answer
  forwarded  first query for an allowed name: parse, judge, hand to the upstream pool
  cached     a blocked name answered again from the per-customer cache (udp_handler)
  forwarded-again  an allowed name seen before, forwarded unparsed (udp_handler)
  cache-hit  an allowed name answered from the answer cache, entry rendered this second
  cache-aged  the same, but the first hit of the entry in a new second (TTLs rewritten)
  repeated   100 blocked names again and again (udp_handler), drained like dga
  dga        a never-seen child of a listed name whose parent was blocked before (DGA malware:
             zones.py), 4 children per parent between two drains into a real detection log
             (the drain, once a "second" of 4 x N queries, is counted in the rate)

and the ratio dga / repeated of each tree (issue 14's target: >= 0.9).

    .venv/bin/python bench/engine_ab.py --base /tmp/base-checkout/daemon --rounds 7

The base tree is any earlier checkout's ``daemon`` directory (``git archive REV daemon``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
N = 20_000          # distinct names per workload (each query is the first of its name)


def _policy(tmp: Path) -> Path:
    pol = tmp / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "cc.txt").write_text("".join(f"cc{i}.example\n" for i in range(N)))
    (pol / "lists" / "m.txt").write_text("csam.example\n")
    (pol / "p.yaml").write_text(
        "customers:\n"
        "  - {id: a, name: A, prefixes: [192.0.2.0/26]}\n"
        "  - {id: b, name: B, prefixes: [198.51.100.0/25]}\n"
        "dns:\n  lists:\n"
        "    - {id: m, class: mandatory, source: lists/m.txt}\n"
        "    - {id: cc, class: security, source: lists/cc.txt}\n")
    return pol


class _Pool:
    primary = None

    def __init__(self):
        self.sent: list = []

    def forward(self, p) -> None:
        if len(self.sent) < N:
            self.sent.append(p)

    def drain(self) -> None:
        pass


async def _engine(tmp: Path):
    from nocpolicy.dns.engine import Engine
    from nocpolicy.dns.lists import ListSet
    from nocpolicy.dns.sources import ListManager
    from nocpolicy.dns.stats import DnsStats
    from nocpolicy.policy.load import load_policy
    from nocpolicy.store import Store
    policy = load_policy(str(_policy(tmp)))
    mgr = ListManager(Store(tmp / "db.sqlite"), str(tmp / "state"))
    (tmp / "state").mkdir()
    lists = ListSet.of([await mgr.build(bl, policy.directory) for bl in policy.dns.lists])
    from nocpolicy.dns.detections import DetectionLog
    eng = Engine(DnsStats(), DetectionLog(Store(tmp / "det.sqlite"), b"k" * 32), _Pool())
    lim = getattr(eng, "limiter", None)
    if lim is not None:          # one source sends everything here: measure the path, not the limits
        lim.qps = lim.blocked_qps = lim.max_pending = 1 << 62
    if hasattr(eng, "set_view"):                      # subscribers area
        from nocpolicy.subscribers.model import EVERYTHING, Decisions
        from nocpolicy.subscribers.view import build_view
        eng.swap(lists)
        eng.set_view(build_view(policy.customers, "protect", Decisions()), EVERYTHING)
    else:                                             # before it
        from nocpolicy.dns.clients import PrefixIndex

        from nocpolicy.dns.engine import UNKNOWN_MODES
        from nocpolicy.dns.verdict import Subscriber
        subs = {None: UNKNOWN_MODES["protect"], **{c.id: Subscriber(c.id) for c in policy.customers}}
        eng.swap(lists, PrefixIndex.of_customers(policy.customers), subs)
    return eng


def _queries(fmt: str) -> list[bytes]:
    import dnslib
    return [bytes(dnslib.DNSRecord.question(fmt.format(i), "A").pack()) for i in range(N)]


def _rate(fn, items) -> float:
    """Queries per CPU second of this process (CPU time, not wall time: other users of a
    busy machine take turns on the CPU but do not add to this process's CPU time)."""
    t = time.process_time()
    for x in items:
        fn(x)
    return len(items) / (time.process_time() - t)


def child() -> None:
    import asyncio
    with tempfile.TemporaryDirectory() as d:
        eng = asyncio.run(_engine(Path(d)))
        def send(data, addr) -> None:
            pass

        blocked, allowed = _queries("cc{}.example"), _queries("www{}.allowed.example")
        host = "192.0.2.10"
        out = {"blocked": _rate(lambda q: eng.handle(q, host, None, send, False, 0.0), blocked),
               "forwarded": _rate(lambda q: eng.handle(q, host, None, send, False, 0.0), allowed)}
        on = eng.udp_handler(lambda data, addr: None)
        out["cached"] = _rate(lambda q: on(q, host, None, 0.0), blocked)
        out["forwarded-again"] = _rate(lambda q: on(q, host, None, 0.0), allowed)
        import random
        import string
        rng = random.Random(14)
        dga = [x for _ in range(4) for x in _queries("".join(rng.choices(string.ascii_lowercase, k=12)) + ".cc{}.example")]
        rng.shuffle(dga)
        for i, q in enumerate(dga):
            dga[i] = (i & 0xFFFF).to_bytes(2, "big") + q[2:]

        for q in _queries("warm.cc{}.example"):        # each parent blocked once (not timed)
            on(q, host, None, 0.0)
        repeated = [blocked[i % 100] for i in range(len(dga))]

        def run(queries):
            for q in queries:
                on(q, host, None, 0.0)
            eng.drain()
            eng.detections.take()
        run([])
        out["dga"] = _rate(run, [dga]) * len(dga)
        out["repeated"] = _rate(run, [repeated]) * len(repeated)
        out.update(_cache_rates(eng, on, allowed, host))
        print(json.dumps(out))


def _cache_rates(eng, on, allowed: list[bytes], host: str) -> dict:
    """The answer cache's hit path: every allowed name missed once, answered by a fake upstream
    (A record, TTL 3600), then asked again."""
    from nocpolicy.dns.cache import AnswerCache
    from nocpolicy.policy.dnsconf import CacheSettings
    eng.acache = AnswerCache(CacheSettings(max_entries=4 * N))
    eng.pool.sent.clear()
    t = time.perf_counter()
    for q in allowed:
        on(q, host, None, t)
    for p in eng.pool.sent:
        d = p.data
        eng.reply(p, d[:2] + b"\x81\x80\0\1\0\1\0\0\0\0" + d[12:] + b"\xc0\x0c\0\1\0\1\0\0\x0e\x10\0\4\xc0\0\2\1", 0)
    t = time.perf_counter() + 1.0
    for q in allowed:                      # rendered in second t, judged for everyone
        on(q, host, None, t)
    hits0 = eng.acache.hits
    out = {"cache-hit": _rate(lambda q: on(q, host, None, t), allowed),
           "cache-aged": _rate(lambda q: on(q, host, None, t + 2.0), allowed)}
    if eng.acache.hits - hits0 != 2 * len(allowed):
        raise SystemExit(f"cache workloads: {eng.acache.hits - hits0} hits of {2 * len(allowed)}")
    return out


def run(tree: str | None) -> dict:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                         timeout=300)
    if out.returncode:
        raise SystemExit(f"child failed ({tree or 'this tree'}):\n{out.stderr}")
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=False, help="the other tree's daemon/ directory")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child:
        child()
        return
    if not ns.base:
        p.error("--base is required")
    a, b = [], []
    for i in range(max(1, min(ns.rounds, 50))):
        if i % 2:             # ABBA: neither tree always runs first
            b.append(run(str(REPO / "daemon")))
            a.append(run(ns.base))
        else:
            a.append(run(ns.base))
            b.append(run(str(REPO / "daemon")))
    print(f"engine A/B, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {N} names per workload, "
          f"{len(a)} rounds, load average {os.getloadavg()[0]:.1f}")
    for k in ("blocked", "forwarded", "cached", "forwarded-again", "cache-hit", "cache-aged", "repeated", "dga"):
        ma, mb = statistics.median(r[k] for r in a), statistics.median(r[k] for r in b)
        print(f"  {k:<16} base {ma / 1e3:7.1f}k q/s   this tree {mb / 1e3:7.1f}k q/s   ratio {mb / ma:.3f}")
    for name, rs in (("base", a), ("this tree", b)):
        print(f"  dga / repeated   {name}: {statistics.median(r['dga'] / r['repeated'] for r in rs):.2f}")


if __name__ == "__main__":
    main()
