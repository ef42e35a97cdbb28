#!/usr/bin/env python3
"""Hostile traffic at the DNS guard: one infected client floods, two customers must
not notice. All on loopback, bounded in time and rate.

Scenario (each run SECONDS long, default 30):

* the flooder (127.0.0.2) runs dnsperf at the highest rate it reaches (-Q --max-qps) with
  DGA-style names: random distinct subdomains of listed C&C names;
* customer A (127.0.0.3) sends 200 qps of allowed names (forwarded to unbound);
* customer B (127.0.0.4) sends 200 qps of listed names (blocked locally).

Each scenario starts a fresh daemon and first runs the two customers alone for --control
seconds (the same-run control: what the busy machine gives them with no flooder), then with
the flooder. A real flooder is another machine: by default (--pin 0:1) the guard runs on CPU 0
and dnsperf (at nice 10), the customers (this process's threads) and the upstream unbound on
CPU 1, and the guard gets the scheduling the shipped systemd unit gives it (--sched unit: its
own session, as systemd does, with the autogroup weight of the unit's CPUWeight= and the unit's
Nice=). Reported per run: for A and B the share answered and p50/p99/max latency; for the
flooder the qps it sent and the qps the guard limited (and how many of those the socket filter
of muted sources dropped in the kernel); datagrams the kernel dropped because the guard's
socket buffer was full (/proc/net/udp, less the socket filter's); the receive queue (every
50 ms); the guard's CPU use and how long it waited, runnable, for a CPU (the machine's other
work: schedstat); growth of the state directory (bytes/s,
detection rows/s, sampled every second: first and second half of the flood); the daemon's
RSS. Then the same with the flooder repeating 100 listed names. --runs repeats everything;
the summary gives medians. Last, with rate limiting off, dnsperf alone: the DGA mix vs the
repeated mix (throughput ratio), optionally side by side with another checkout of the daemon
(--baseline DIR: its ``daemon`` directory goes first on PYTHONPATH) for an A/B.

    .venv/bin/python bench/hostile_bench.py [--seconds 30] [--names 10000] [--runs 3]
    .venv/bin/python bench/hostile_bench.py --parts throughput --baseline /tmp/main-checkout
    .venv/bin/python bench/hostile_bench.py --parts dga,repeated --ab --baseline /tmp/a,/tmp/b

--ab runs the flood scenarios with each --baseline checkout's daemon too, alternating the
order from run to run (an A/B in the same conditions); --slow-log FILE keeps the customers'
answers slower than 20 ms (wall time sent, latency) to line them up with a probe.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
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
from dns_bench import PIN, WRAP, cpu_seconds, load_avg, nocpolicyd, unbound  # noqa: E402

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "nocpolicyd.service"

RATE = 200
FLOODER: list[str] = []      # taskset/nice before dnsperf (--pin)


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
        self.slow: list[tuple[float, float]] = []     # (wall time sent, latency) over 20 ms

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
                    d = time.perf_counter() - t
                    self.lat.append(d)
                    if d > 0.02 and len(self.slow) < 10_000:
                        self.slow.append((time.time() - d, d))
        self.total = n
        s.close()

    def pct(self, q: float) -> float:
        lat = sorted(self.lat) or [0.0]
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    def share(self) -> float:
        return 100 * len(self.lat) / self.total

    def report(self, label: str) -> str:
        return (f"  {label:<26} answered {len(self.lat)}/{self.total} ({self.share():.2f}%)  "
                f"p50 {self.pct(0.5):.2f} ms  p99 {self.pct(0.99):.2f} ms  max {self.pct(1.0):.1f} ms")


def cpu_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` have waited, runnable, for a CPU (schedstat run_delay):
    how much the machine's other work held the guard back."""
    total = 0
    for t in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((t / "schedstat").read_text().split()[1])
    return total / 1e9


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
    out = subprocess.run([*FLOODER, "dnsperf", "-a", src, "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
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


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the guard's UDP socket (receive buffer full)."""
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(f).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[1].endswith(f":{port:04X}"):
                return int(cols[-1])
    return 0


def rx_queue(port: int) -> int:
    """Bytes waiting in the guard's UDP receive queue (/proc/net/udp, rx_queue)."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}"):
            return int(cols[4].split(":")[1], 16)
    return 0


class QueueSampler(threading.Thread):
    """The guard's receive queue every 50 ms (bounded by the scenario's duration): how much
    customers' queries wait behind."""

    def __init__(self, port: int, seconds: float):
        super().__init__(daemon=True)
        self.port, self.seconds, self.sizes = port, seconds, []

    def run(self) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.seconds and len(self.sizes) < 100_000:
            self.sizes.append(rx_queue(self.port))
            time.sleep(0.05)

    def pct(self, q: float) -> float:
        x = sorted(self.sizes) or [0]
        return x[min(len(x) - 1, int(q * len(x)))] / 1e6


class DirSampler(threading.Thread):
    """The state directory's size every second (bounded by the scenario's duration)."""

    def __init__(self, d: Path, seconds: float):
        super().__init__(daemon=True)
        self.d, self.seconds, self.sizes = d, seconds, []

    def run(self) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.seconds:
            self.sizes.append(dir_bytes(self.d))
            time.sleep(1)


@contextlib.contextmanager
def code(path: str | None):
    """Daemons started inside run the code of ``path``/daemon (None: this tree)."""
    old = os.environ.get("PYTHONPATH")
    if path:
        os.environ["PYTHONPATH"] = str(Path(path) / "daemon")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def cpu_set(spec: str) -> set[int]:
    """A taskset CPU list ("1", "0,2", "2-3") as a set."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def unit_sched() -> tuple[int, int]:
    """CPUWeight= and Nice= of the shipped systemd unit (100 and 0 where it sets none)."""
    text = UNIT.read_text()
    w = re.search(r"^CPUWeight=(\d+)", text, re.M)
    n = re.search(r"^Nice=(-?\d+)", text, re.M)
    return int(w.group(1)) if w else 100, int(n.group(1)) if n else 0


def place(a) -> str:
    """Where the processes run (--pin, --sched); returns a line for the report.

    A real flooder is another machine: the guard gets one CPU, dnsperf, the customers (this
    process's threads) and the upstream unbound the other. The guard runs with the unit's
    scheduling: its own session (systemd services do setsid) whose autogroup gets the nice
    value of the unit's CPUWeight= relative to the default 100 (1.25 per nice step: the
    cgroup weight on this cgroup-v1 + autogroup kernel), and the unit's Nice=. dnsperf runs
    at nice 10 beside the customers, so that the probes measure the guard, not the flooder
    taking their CPU."""
    global FLOODER
    weight, nice = unit_sched() if a.sched == "unit" else (100, 0)
    a.autogroup_nice = -round(math.log(weight / 100) / math.log(1.25)) if weight != 100 else 0
    if a.sched == "unit":
        WRAP["server"] = ["setsid", "nice", "-n", str(nice)]
    if a.pin:
        PIN["server"], PIN["harness"] = a.pin.split(":")
        os.sched_setaffinity(0, cpu_set(PIN["harness"]))
    FLOODER = ["nice", "-n", "10"] + (["taskset", "-c", PIN["harness"]] if a.pin else [])
    return (f"guard pinned to CPU {PIN['server']}, dnsperf (nice 10) + customers + unbound to CPU "
            f"{PIN['harness']}" if a.pin else "not pinned") + (
        f"; guard with the unit's CPUWeight={weight} (autogroup nice {a.autogroup_nice}) and Nice={nice}"
        if a.sched == "unit" else "; guard at default scheduling")


def guard_started(d, a) -> None:
    """The autogroup weight of the guard's session (CPUWeight= of the unit)."""
    if a.autogroup_nice:
        try:
            Path(f"/proc/{d.p.pid}/autogroup").write_text(str(a.autogroup_nice))
        except OSError as exc:
            print(f"  (autogroup nice not set: {exc})")


def customers(port: int, allowed, listed, seconds: float) -> tuple[Customer, Customer]:
    ca = Customer("127.0.0.3", port, allowed, seconds)
    cb = Customer("127.0.0.4", port, listed, seconds)
    ca.start()
    cb.start()
    ca.join(seconds + 30)
    cb.join(seconds + 30)
    return ca, cb


def start_guard(work, pol, label, a):
    """A fresh daemon for a scenario; on a loaded machine its first answer can take longer than
    the readiness wait: then the log's tail is shown and one more daemon is started."""
    for attempt in range(2):
        try:
            d, port, mport, _ = nocpolicyd(work, pol, tag=f"-{label[:3]}-{attempt}", io=a.dns_io)
        except RuntimeError as exc:
            logs = sorted(work.glob(f"nocpolicyd-*-{label[:3]}-{attempt}.log"), key=lambda f: f.stat().st_mtime)
            tail = logs[-1].read_text(errors="replace").splitlines()[-8:] if logs else []
            print(f"  (daemon not answering: {exc}; its log ends:\n    " + "\n    ".join(tail) + ")")
            if attempt:
                raise
            continue
        guard_started(d, a)
        return d, port, mport
    raise AssertionError("unreachable")


def scenario(work, label, pol, qfile, allowed, listed, a) -> dict:
    d, port, mport = start_guard(work, pol, label, a)
    try:
        time.sleep(1)
        ctl = customers(port, allowed, listed, a.control) if a.control else None
        b0, r0, l0 = dir_bytes(d.state), rows(d.state), metric(mport, "nocpolicy_dns_ratelimited_total")
        sf0 = metric(mport, "nocpolicy_dns_ratelimit_socket_filtered_total")
        k0, load0, w0, c0 = udp_drops(port), load_avg(), cpu_wait(d.p.pid), cpu_seconds(d.p.pid)
        sampler = DirSampler(d.state, a.seconds)
        sampler.start()
        qs = QueueSampler(port, a.seconds)
        qs.start()
        box: dict = {}
        flood = threading.Thread(target=lambda: box.update(dnsperf("127.0.0.2", port, qfile, a.seconds, a.max_qps)))
        flood.start()
        ca, cb = customers(port, allowed, listed, a.seconds)
        flood.join(a.seconds + 90)
        f = box
        waited, used = cpu_wait(d.p.pid) - w0, cpu_seconds(d.p.pid) - c0
        time.sleep(2.5)                                    # the last detection batch written
        b1, r1, l1 = dir_bytes(d.state), rows(d.state), metric(mport, "nocpolicy_dns_ratelimited_total")
        time.sleep(1.5)                                    # the last window's socket-filter drops counted
        sf = metric(mport, "nocpolicy_dns_ratelimit_socket_filtered_total") - sf0
        kdrops = udp_drops(port) - k0 - sf                 # the socket filter's drops are counted there too
        time.sleep(10)                                     # the kernel meter's counter is read every 10 s
        meter = metric(mport, "nocpolicy_dns_kernel_meter_dropped_total")
        rss = d.rss_mb()
        sizes = sampler.sizes or [b0]
        half = len(sizes) // 2
        g1 = (sizes[half] - sizes[0]) / max(1, half)
        g2 = (sizes[-1] - sizes[half]) / max(1, len(sizes) - 1 - half)
        print(f"\n== {label}: flooder dnsperf -Q {a.max_qps} for {a.seconds}s + 2 customers at {RATE} qps "
              f"(load before {load0}, after {load_avg()})")
        if ctl:
            print(ctl[0].report(f"control A, no flood ({a.control}s)"))
            print(ctl[1].report(f"control B, no flood ({a.control}s)"))
        if a.slow_log:
            with open(a.slow_log, "a") as fh:
                fh.write(f"# {label}\n" + "".join(f"{c} {t:.3f} {d * 1000:.1f} ms\n"
                                                   for c, x in (("A", ca), ("B", cb)) for t, d in x.slow))
        print(ca.report("customer A (allowed)"))
        print(cb.report("customer B (listed)"))
        print(f"  flooder                sent {f['sent'] / a.seconds:.0f} qps, answered {f['qps']:.0f} qps, "
              f"limited {(l1 - l0) / a.seconds:.0f} qps (dropped or TC; {sf / a.seconds:.0f} qps of them by the socket filter of muted sources); kernel dropped {kdrops} datagrams "
              f"at the guard's socket (buffer full); kernel meter dropped {meter / a.seconds:.0f}/s")
        print(f"  receive queue          p50 {qs.pct(0.5):.2f} MB, p99 {qs.pct(0.99):.2f} MB, max {qs.pct(1.0):.2f} MB "
              f"(sampled every 50 ms; full at ~{2 * 4 * 1024 * 1024 / 1e6:.1f} MB)")
        print(f"  guard CPU              used {used / a.seconds * 100:.0f} % of a CPU; waited for a CPU (runnable, "
              f"not run: the machine's other work) {waited / a.seconds * 1000:.0f} ms per second of flood")
        print(f"  state dir              +{(b1 - b0) / a.seconds:.0f} B/s ({(b1 - b0) / a.seconds * 60 / 1e6:.3f} MB "
              f"per minute; first half {g1 * 60 / 1e6:.3f}, second half {g2 * 60 / 1e6:.3f} MB/min; "
              f"{min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} MB), detection rows +{(r1 - r0) / a.seconds:.2f}/s")
        print(f"  state dir every 10 s   {', '.join(f'{x / 1e6:.2f}' for x in sizes[::10])} MB")
        print(f"  nocpolicyd RSS         {rss[0]:.0f} MB (peak {rss[1]:.0f} MB)")
        out = {"A %": ca.share(), "A p99": ca.pct(0.99), "B %": cb.share(), "B p99": cb.pct(0.99),
               "flood qps": f["sent"] / a.seconds, "limited qps": (l1 - l0) / a.seconds, "kernel drops": kdrops, "filtered qps": sf / a.seconds,
               "MB/min": (b1 - b0) / a.seconds * 60 / 1e6, "MB/min 2nd half": g2 * 60 / 1e6,
               "meter drops/s": meter / a.seconds, "guard CPU %": used / a.seconds * 100,
               "CPU wait ms/s": waited / a.seconds * 1000,
               "rxq p99 MB": qs.pct(0.99)}
        if ctl:
            out.update({"ctl A p99": ctl[0].pct(0.99), "ctl B p99": ctl[1].pct(0.99),
                        "ctl A %": ctl[0].share(), "ctl B %": ctl[1].share()})
        return out
    finally:
        d.stop()


def throughput(work, pol, qfiles, a) -> None:
    variants = [("this tree", None)] + ([("baseline", a.baseline)] if a.baseline else [])
    res: dict[tuple, list[float]] = {(v, k): [] for v, _ in variants for k in qfiles}
    cpu: dict[tuple, list[float]] = {(v, k): [] for v, _ in variants for k in qfiles}
    daemons = []
    try:
        for v, path in variants:
            with code(path):
                daemons.append((v, *nocpolicyd(work, pol, tag=f"-off-{len(daemons)}")[:2]))
                guard_started(daemons[-1][1], a)
        for r in range(a.runs):
            order = [(v, d, port, k, q) for v, d, port in daemons for k, q in qfiles.items()]
            for v, d, port, k, q in (order if r % 2 == 0 else reversed(order)):
                c0 = cpu_seconds(d.p.pid)
                out = dnsperf("127.0.0.2", port, q, a.tp_seconds, a.max_qps)
                res[(v, k)].append(out["qps"])
                cpu[(v, k)].append((cpu_seconds(d.p.pid) - c0) / max(1, out["completed"]) * 1e6)
    finally:
        for _v, d, _p in daemons:
            d.stop()
    med = {k: statistics.median(x) for k, x in res.items()}
    us = {k: statistics.median(x) for k, x in cpu.items()}
    print(f"\n== rate limiting off, dnsperf alone from one client, {a.runs} runs x {a.tp_seconds}s, medians "
          f"(load {load_avg()}); CPU: the daemon's user+system time per answered query")
    for (v, k), x in med.items():
        print(f"  {v:<10} {k:<20} {x:>8.0f} qps, {us[(v, k)]:5.1f} us CPU/query  "
              f"(runs: {', '.join(f'{y / 1000:.1f}k' for y in res[(v, k)])})")
    for v, _ in variants:
        dga, repd = (v, "DGA mix"), (v, "repeated 100 names")
        print(f"  {v:<10} ratio DGA / repeated: {med[dga] / med[repd]:.2f} in qps, {us[repd] / us[dga]:.2f} in "
              "queries per CPU second (target >= 0.9)")


def summary(label: str, runs: list[dict]) -> None:
    if not runs:
        return
    print(f"\n== {label}: medians of {len(runs)} runs")
    for k in runs[0]:
        vals = [r[k] for r in runs]
        print(f"  {k:<18} {statistics.median(vals):>10.2f}   (runs: {', '.join(f'{x:.2f}' for x in vals)})")


def run_scenarios(work, scenarios: dict, allowed, listed, a) -> None:
    """Each scenario --runs times; with --ab, the --baseline checkout's daemon too, the order of
    the two alternating from run to run (an A/B in the same conditions)."""
    variants = [("this tree", None)] + ([(Path(b).name, b) for b in a.baseline.split(",")] if a.ab else [])
    res: dict[tuple, list] = {(k, v): [] for k in scenarios for v, _ in variants}
    for r in range(a.runs):
        for k, (label, pol, qfile) in scenarios.items():
            for v, path in (variants if r % 2 == 0 else variants[::-1]):
                with code(path):
                    res[(k, v)].append(scenario(work, f"{label} [{v}]", pol, qfile, allowed, listed, a))
    for (k, v), runs in res.items():
        summary(f"{scenarios[k][0]} [{v}]", runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=30)
    p.add_argument("--control", type=int, default=10, help="seconds of customers alone before each flood")
    p.add_argument("--tp-seconds", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--names", type=int, default=10_000, help="listed C&C names")
    p.add_argument("--max-qps", type=int, default=400_000)
    p.add_argument("--parts", default="dga,dga-kernel,repeated,throughput")
    p.add_argument("--kernel-qps", type=int, default=5000,
                   help="dns.ratelimit.kernel_qps of the dga-kernel part (needs root and nft: the table is "
                        "added to this host's ruleset for the daemon's port while it runs)")
    p.add_argument("--pin", default="0:1", help="GUARD_CPUS:HARNESS_CPUS ('' = not pinned)")
    p.add_argument("--sched", choices=("unit", "default"), default="unit",
                   help="the guard's scheduling: as the systemd unit sets it, or the default")
    p.add_argument("--dns-io", default="auto", help="the daemon's --dns-io (auto, native, batched, asyncio)")
    p.add_argument("--slow-log", help="append the customers' answers slower than 20 ms (wall time sent, "
                   "latency) to this file")
    p.add_argument("--baseline", help="another checkout (its daemon/ directory) for the throughput A/B")
    p.add_argument("--ab", action="store_true", help="run the flood scenarios with --baseline's daemon too (several: comma-separated, "
                   "each named by its directory)")
    a = p.parse_args()
    parts = set(a.parts.split(","))
    print(f"hostile_bench {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {place(a)}")
    rng = random.Random(14)
    with tempfile.TemporaryDirectory(prefix="hostile-bench-") as tmp:
        work = Path(tmp)
        listed = [f"cc{i}.c2-bench.example" for i in range(a.names)]
        allowed = [f"ok{i}.fine-bench.example" for i in range(1000)]
        ub, ub_port = unbound(work, [f"{n}. 300 IN A 192.0.2.{i % 250 + 1}" for i, n in enumerate(allowed)], [],
                              role="harness")
        try:
            dga = work / "dga.q"
            dga.write_text("".join(f"{''.join(rng.choices(string.ascii_lowercase, k=12))}.{rng.choice(listed)} A\n"
                                   for _ in range(300_000)))
            rep = work / "repeated.q"
            rep.write_text("".join(f"{n} A\n" for n in listed[:100]))
            on = policy(work, ub_port, listed, "")
            meter = policy(work, ub_port, listed, f"  ratelimit:\n    kernel_qps: {a.kernel_qps}\n")
            scenarios = {"dga": ("DGA flood, rate limiting on (defaults)", on, dga),
                         "dga-kernel": (f"DGA flood, defaults + kernel meter {a.kernel_qps}/s", meter, dga),
                         "repeated": ("repeated 100 listed names, rate limiting on", on, rep)}
            run_scenarios(work, {k: v for k, v in scenarios.items() if k in parts}, allowed, listed[100:], a)
            if "throughput" in parts:
                off = policy(work, ub_port, listed, "  ratelimit:\n    qps: 0\n    blocked_qps: 0\n")
                throughput(work, off, {"DGA mix": dga, "repeated 100 names": rep}, a)
        finally:
            ub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
