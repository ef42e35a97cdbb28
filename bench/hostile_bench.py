#!/usr/bin/env python3
"""Hostile traffic at the DNS guard: one infected client floods, two customers must
not notice. All on loopback, bounded in time and rate.

Scenario (each run SECONDS long, default 30):

* the flooder (127.0.0.2) runs dnsperf at the highest rate it reaches (-Q --max-qps) with
  DGA-style names: random distinct subdomains of listed C&C names;
* customer A (127.0.0.3) sends 200 qps of allowed names (forwarded to unbound);
* customer B (127.0.0.4) sends 200 qps of listed names (blocked locally).

Reported per run: for A and B the share answered and p50/p99/max latency; for the flooder the
qps it sent and the qps the guard limited; growth of the state directory (bytes/s, detection
rows/s); the daemon's RSS. Then the same run with the flooder repeating 100 listed names.
Last, with rate limiting off, dnsperf alone: the DGA mix vs the repeated mix (throughput ratio).

    .venv/bin/python bench/hostile_bench.py [--seconds 30] [--names 10000]
"""

from __future__ import annotations

import argparse
import random
import re
import select
import socket
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dns_bench import load_avg, nocpolicyd, unbound  # noqa: E402

RATE = 200


def query(name: str, qid: int) -> bytes:
    q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"


class Customer(threading.Thread):
    """RATE queries per second from ``src``, each answer's latency recorded (bounded: seconds*RATE)."""

    def __init__(self, src: str, port: int, names: list[str], seconds: float):
        super().__init__(daemon=True)
        self.src, self.port, self.names, self.seconds = src, port, names, seconds
        self.sent: dict[int, float] = {}
        self.lat: list[float] = []

    def run(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.src, 0))
        n = int(self.seconds * RATE)
        t0 = time.perf_counter()
        i = 0
        while i < n or (self.sent and time.perf_counter() - t0 < self.seconds + 2):
            due = t0 + i / RATE
            now = time.perf_counter()
            if i < n and now >= due:
                qid = i & 0xFFFF
                self.sent[qid] = now
                s.sendto(query(self.names[i % len(self.names)], qid), ("127.0.0.1", self.port))
                i += 1
                continue
            wait = max(0.0, min(due - now, 0.05)) if i < n else 0.05
            if select.select([s], [], [], wait)[0]:
                data = s.recv(4096)
                t = self.sent.pop(int.from_bytes(data[:2], "big"), None)
                if t is not None:
                    self.lat.append(time.perf_counter() - t)
        self.total = n
        s.close()

    def report(self, label: str) -> str:
        lat = sorted(self.lat) or [0.0]
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000   # noqa: E731
        return (f"  {label:<22} answered {len(self.lat)}/{self.total} ({100 * len(self.lat) / self.total:.2f}%)  "
                f"p50 {p(0.5):.2f} ms  p99 {p(0.99):.2f} ms  max {lat[-1] * 1000:.1f} ms")


def dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def rows(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state / 'nocpolicy.db'}?mode=ro", uri=True, timeout=10) as db:
            return db.execute("SELECT COUNT(*) FROM dns_detections").fetchone()[0]
    except sqlite3.Error:
        return 0


def metric(mport: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def dnsperf(src: str, port: int, qfile: Path, seconds: int, max_qps: int) -> dict:
    out = subprocess.run(["dnsperf", "-a", src, "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
                          "-l", str(seconds), "-Q", str(max_qps), "-c", "4", "-q", "20000", "-t", "1"],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))
    done = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    return {"sent": sent, "completed": done, "qps": qps}


def policy(work: Path, ub_port: int, listed: list[str], limits: str) -> Path:
    pol = Path(tempfile.mkdtemp(prefix="hostile-", dir=work))
    (pol / "lists").mkdir()
    (pol / "lists" / "cc.txt").write_text("\n".join(listed) + "\n")
    (pol / "customers.yaml").write_text("customers:\n" + "".join(
        f"  - id: {c}\n    name: {c}\n    prefixes: [127.0.0.{i}/32]\n"
        for c, i in (("infected", 2), ("cust-a", 3), ("cust-b", 4), ("local", 1))))
    (pol / "dns.yaml").write_text(f"""dns:
  upstreams:
    - id: unbound
      address: 127.0.0.1:{ub_port}
      timeout: 1s
  lists:
    - id: cc
      class: security
      format: domains
      source: lists/cc.txt
      max_shrink: 0.9
{limits}""")
    return pol


def scenario(work, label, pol, qfile, allowed, listed, a) -> None:
    d, port, mport, _ = nocpolicyd(work, pol, tag=f"-{label[:3]}")
    try:
        time.sleep(1)
        b0, r0, l0 = dir_bytes(d.state), rows(d.state), metric(mport, "nocpolicy_dns_ratelimited_total")
        ca = Customer("127.0.0.3", port, allowed, a.seconds)
        cb = Customer("127.0.0.4", port, listed, a.seconds)
        ca.start()
        cb.start()
        f = dnsperf("127.0.0.2", port, qfile, a.seconds, a.max_qps)
        ca.join(a.seconds + 30)
        cb.join(a.seconds + 30)
        time.sleep(2.5)                                    # the last detection batch written
        b1, r1, l1 = dir_bytes(d.state), rows(d.state), metric(mport, "nocpolicy_dns_ratelimited_total")
        rss = d.rss_mb()
        print(f"\n== {label}: flooder dnsperf -Q {a.max_qps} for {a.seconds}s + 2 customers at {RATE} qps "
              f"(load {load_avg()})")
        print(ca.report("customer A (allowed)"))
        print(cb.report("customer B (listed)"))
        print(f"  flooder                sent {f['sent'] / a.seconds:.0f} qps, answered {f['qps']:.0f} qps, "
              f"limited {(l1 - l0) / a.seconds:.0f} qps (dropped or TC)")
        print(f"  state dir              +{(b1 - b0) / a.seconds:.0f} B/s ({(b1 - b0) / a.seconds * 60 / 1e6:.3f} MB "
              f"per minute), detection rows +{(r1 - r0) / a.seconds:.2f}/s")
        print(f"  nocpolicyd RSS         {rss[0]:.0f} MB (peak {rss[1]:.0f} MB)")
    finally:
        d.stop()


def throughput(work, pol, qfiles, a) -> None:
    res: dict[str, list[float]] = {k: [] for k in qfiles}
    d, port, _, _ = nocpolicyd(work, pol, tag="-off")
    try:
        for r in range(a.runs):
            for k, q in (qfiles.items() if r % 2 == 0 else reversed(qfiles.items())):
                res[k].append(dnsperf("127.0.0.2", port, q, a.tp_seconds, a.max_qps)["qps"])
    finally:
        d.stop()
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n== rate limiting off, dnsperf alone from one client, {a.runs} runs x {a.tp_seconds}s, median qps")
    for k, v in med.items():
        print(f"  {k:<28} {v:>8.0f} qps  (runs: {', '.join(f'{x / 1000:.0f}k' for x in res[k])})")
    print(f"  ratio DGA / repeated: {med['DGA mix'] / med['repeated 100 names']:.2f} (target >= 0.9)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--tp-seconds", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--names", type=int, default=10_000, help="listed C&C names")
    p.add_argument("--max-qps", type=int, default=400_000)
    a = p.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        work = Path(tmp)
        listed = [f"cc{i}.c2-bench.example" for i in range(a.names)]
        allowed = [f"ok{i}.fine-bench.example" for i in range(1000)]
        ub, ub_port = unbound(work, [f"{n}. 300 IN A 192.0.2.{i % 250 + 1}" for i, n in enumerate(allowed)], [])
        try:
            dga = work / "dga.q"
            dga.write_text("".join(f"{''.join(rng.choices(string.ascii_lowercase, k=12))}.{rng.choice(listed)} A\n"
                                   for _ in range(300_000)))
            rep = work / "repeated.q"
            rep.write_text("".join(f"{n} A\n" for n in listed[:100]))
            on = policy(work, ub_port, listed, "")
            scenario(work, "DGA flood, rate limiting on (defaults)", on, dga, allowed, listed[100:], a)
            scenario(work, "repeated 100 listed names, rate limiting on", on, rep, allowed, listed[100:], a)
            off = policy(work, ub_port, listed, "  ratelimit:\n    qps: 0\n    blocked_qps: 0\n")
            throughput(work, off, {"DGA mix": dga, "repeated 100 names": rep}, a)
        finally:
            ub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
