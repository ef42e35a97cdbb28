#!/usr/bin/env python3
"""DNS guard benchmark: nocpolicyd side by side with unbound and dnsdist, in one run.

Parts (all on loopback, free ports, bounded in time and rate):

  blocked   nocpolicyd answering blocked names (a list of N names) vs unbound answering
            the same names from local-zone always_nxdomain; also --workers 2.
  forwarded nocpolicyd forwarding to unbound (local-data) vs dnsdist forwarding to the
            same unbound.
            Both mixes also run nocpolicyd --dns-io asyncio (one system call per datagram)
            beside the default batched I/O, so the gain of batching shows in the same run.
  biglist   the 937k-domain Maltrail list: daemon start-to-ready time, list load, RSS.
  reload    the big list reloaded (file changed -> policy watcher) while dnsperf loads the
            daemon and a prober measures every answer: failures and stalls > 50 ms.

Each throughput figure is the median of --runs runs of dnsperf -l SECONDS -Q MAX_QPS,
tools alternating so that noise from other users of the machine hits both sides.

    /tmp/venv/bin/python bench/dns_bench.py                 # everything, about 2 minutes
    /tmp/venv/bin/python bench/dns_bench.py --parts blocked --runs 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIG = REPO.parent / "shared" / "data" / "maltrail" / "all-domains.txt.gz"
BIN = Path(sys.executable).parent
OUTSTANDING = [100]   # dnsperf -q (--outstanding)
# CPU pinning (--pin): the server under test on one CPU, dnsperf and the upstream unbound on
# another, the same for every tool; None = not pinned
PIN: dict[str, str | None] = {"server": None, "harness": None}
# commands put before a role's argv (hostile_bench.py: setsid/nice as the systemd unit gives them)
WRAP: dict[str, list[str]] = {"server": [], "harness": []}


def pinned(role: str, argv: list) -> list:
    cpus = PIN[role]
    return [*WRAP[role], *(["taskset", "-c", cpus] if cpus else []), *argv]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, its threads and its live child processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        pids = [pid] + [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                        for c in (t / "children").read_text().split()]
        for p in pids:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
    except (OSError, ValueError):
        pass
    return total


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def wait_udp(port: int, timeout: float = 30.0) -> float:
    """Seconds until something answers a DNS query on 127.0.0.1:port."""
    t0 = time.monotonic()
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04wait\x07example\x00\x00\x01\x00\x01"
    while time.monotonic() - t0 < timeout:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, ("127.0.0.1", port))
                if s.recv(512)[:2] == b"\x12\x34":
                    return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


class Proc:
    def __init__(self, argv, log: Path, role: str = "server", **kw):
        self.log = open(log, "wb")
        self.p = subprocess.Popen(pinned(role, argv), stdout=self.log, stderr=subprocess.STDOUT, **kw)

    def rss_mb(self) -> tuple[float, float]:
        st = Path(f"/proc/{self.p.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1)) / 1024
        hwm = int(re.search(r"VmHWM:\s+(\d+)", st).group(1)) / 1024
        return rss, hwm

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def unbound(work: Path, local: list[str], zones_nx: list[str], role: str = "server") -> tuple[Proc, int]:
    port = free_port()
    d = work / f"unbound-{port}"
    d.mkdir()
    conf = d / "unbound.conf"
    body = "\n".join(f'    local-data: "{rr}"' for rr in local)
    body += "\n" + "\n".join(f'    local-zone: "{z}." always_nxdomain' for z in zones_nx)
    conf.write_text(f"""server:
    interface: 127.0.0.1
    port: {port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    username: ""
    chroot: ""
    directory: "{d}"
    pidfile: "{d}/unbound.pid"
    do-ip6: no
    num-threads: 1
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    so-rcvbuf: 4m
    local-zone: "." static
{body}
remote-control:
    control-enable: no
""")
    p = Proc(["unbound", "-d", "-c", str(conf)], d / "log", role)
    wait_udp(port)
    return p, port


def dnsdist(work: Path, upstream: int) -> tuple[Proc, int]:
    port = free_port()
    conf = work / f"dnsdist-{port}.conf"
    conf.write_text(f"""setLocal("127.0.0.1:{port}")
newServer({{address="127.0.0.1:{upstream}", name="unbound", checkInterval=3600}})
setSecurityPollSuffix("")
setServerPolicy(firstAvailable)
""")
    p = Proc(["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)], work / f"dnsdist-{port}.log")
    wait_udp(port)
    p.threads = len(list(Path(f"/proc/{p.p.pid}/task").iterdir()))
    return p, port


ECHO = """
import asyncio, sys, uvloop
class P(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.s = t.sendto
    def datagram_received(self, d, a):
        self.s(d[:2] + b"\\x81\\x83" + d[4:], a)
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(P, local_addr=("127.0.0.1", int(sys.argv[1])))
    await asyncio.Event().wait()
uvloop.run(main())
"""


def echo(work: Path) -> tuple[Proc, int]:
    """The floor of any Python + uvloop responder: echo each query back as NXDOMAIN, no DNS work."""
    port = free_port()
    p = Proc([sys.executable, "-c", ECHO, str(port)], work / f"echo-{port}.log")
    wait_udp(port)
    return p, port


def policy(work: Path, upstream: int, list_file: Path, fmt: str = "domains") -> Path:
    pol = Path(tempfile.mkdtemp(prefix=f"policies-{list_file.stem}-", dir=work))
    (pol / "lists").mkdir(parents=True)
    shutil.copy(list_file, pol / "lists" / list_file.name)
    (pol / "customers.yaml").write_text("customers:\n  - id: bench\n    name: bench\n"
                                        "    prefixes: [127.0.0.0/8]\n")
    (pol / "dns.yaml").write_text(f"""dns:
  upstreams:
    - id: unbound
      address: 127.0.0.1:{upstream}
      timeout: 1s
  lists:
    - id: bench
      class: security
      format: {fmt}
      source: lists/{list_file.name}
      max_shrink: 0.9
  # one client at full speed: limits on (their counting runs on every query) but never reached
  ratelimit:
    qps: 10000000
    blocked_qps: 10000000
    max_pending: 50000
""")
    return pol


def nocpolicyd(work: Path, pol: Path, workers: int = 1, tag: str = "",
               io: str = "auto") -> tuple[Proc, int, int, float]:
    port, mport, aport = free_port(), free_port(), free_port()
    state = work / f"state-{port}"
    t0 = time.monotonic()
    p = Proc([str(BIN / "nocpolicyd"), "--policies", str(pol), "--state-dir", str(state),
              "--dns-listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}",
              "--admin-listen", f"127.0.0.1:{aport}", "--workers", str(workers), "--dns-io", io],
             work / f"nocpolicyd-{port}{tag}.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    ready = time.monotonic() - t0
    try:
        wait_udp(port)
    except RuntimeError:
        p.stop()                   # not left running when the caller gives up on it
        raise
    p.admin, p.state = f"127.0.0.1:{aport}", state
    return p, port, mport, ready


def dnsperf(port: int, qfile: Path, seconds: int, max_qps: int, clients: int = 4) -> dict:
    out = subprocess.run(pinned("harness", ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l", str(seconds),
                          "-Q", str(max_qps), "-c", str(clients), "-q", str(OUTSTANDING[0]), "-t", "2"]),
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = int(re.search(r"Queries lost:\s+(\d+)", out).group(1))
    lat = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    return {"qps": qps, "lost": lost, "avg_ms": float(lat.group(1)) * 1000 if lat else None}


def side_by_side(label: str, targets: list[tuple[str, int, Proc]], qfile: Path, runs: int, seconds: int,
                 max_qps: int) -> dict[str, float]:
    """dnsperf against each target in turn; qps and the target's CPU use (100% = one core)."""
    res: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in targets}
    lost: dict[str, int] = {name: 0 for name, _, _ in targets}
    for r in range(runs):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for name, port, proc in order:
            c0, t0 = cpu_seconds(proc.p.pid), time.monotonic()
            d = dnsperf(port, qfile, seconds, max_qps)
            cpu[name].append((cpu_seconds(proc.p.pid) - c0) / (time.monotonic() - t0) * 100)
            res[name].append(d["qps"])
            lost[name] += d["lost"]
    med = {name: statistics.median(v) for name, v in res.items()}
    pin = (f"server under test pinned to CPU {PIN['server']}, dnsperf and upstream to CPU {PIN['harness']}"
           if PIN["server"] else "not pinned")
    print(f"\n== {label}: dnsperf -l {seconds} -Q {max_qps} -c 4 -q {OUTSTANDING[0]}, {runs} runs, median qps ({pin})")
    base = targets[-1][0]
    for name, _, _ in targets:
        runs_txt = ", ".join(f"{x / 1000:.0f}k" for x in res[name])
        ratio = med[name] / med[base] if med[base] else 0
        per_q = statistics.median(c / 100 * 1e6 / q for c, q in zip(cpu[name], res[name], strict=True) if q)
        print(f"  {name:<30} {med[name]:>8.0f} qps  ratio vs {base}: {ratio:.2f}  "
              f"(CPU {statistics.median(cpu[name]):.0f}%, {per_q:.1f} us CPU/answer; runs: {runs_txt}; "
              f"lost {lost[name]})")
    return med


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- parts ----------------------------------------------------------------------------

def part_blocked(work: Path, a) -> None:
    names = [f"blk{i}.cc-bench.example" for i in range(1000)]
    lst = work / "blocked.txt"
    lst.write_text("\n".join(names) + "\n")
    qfile = work / "blocked.q"
    qfile.write_text("".join(f"{n} A\n" for n in names))
    ub, ub_port = unbound(work, [], names)
    try:
        us, port, _, _ = nocpolicyd(work, policy(work, ub_port, lst))
        ua, aport, _, _ = nocpolicyd(work, policy(work, ub_port, lst), tag="-asyncio", io="asyncio")
        ec, ec_port = echo(work)
        try:
            side_by_side("blocked names answered locally (1 process)",
                         [("nocpolicyd", port, us), ("nocpolicyd --dns-io asyncio", aport, ua),
                          ("python+uvloop echo (no work)", ec_port, ec),
                          ("unbound local-zone", ub_port, ub)], qfile, a.runs, a.seconds, a.max_qps)
        finally:
            us.stop()
            ua.stop()
            ec.stop()
        if a.workers > 1 and PIN["server"]:
            print(f"\n(--workers {a.workers} not measured while pinned to one CPU: run with --pin none)")
        elif a.workers > 1:
            us2, port2, _, _ = nocpolicyd(work, policy(work, ub_port, lst), workers=a.workers, tag="-w")
            try:
                us1, port1, _, _ = nocpolicyd(work, policy(work, ub_port, lst), tag="-1")
                try:
                    side_by_side(f"blocked names, --workers {a.workers} vs 1 (SO_REUSEPORT)",
                                 [(f"nocpolicyd --workers {a.workers}", port2, us2),
                                  ("nocpolicyd --workers 1", port1, us1), ("unbound local-zone", ub_port, ub)], qfile, a.runs, a.seconds, a.max_qps)
                finally:
                    us1.stop()
            finally:
                us2.stop()
    finally:
        ub.stop()


def part_forwarded(work: Path, a) -> None:
    names = [f"h{i}.fwd-bench.example" for i in range(1000)]
    local = [f"{n}. 300 IN A 192.0.2.{i % 250 + 1}" for i, n in enumerate(names)]
    qfile = work / "forwarded.q"
    qfile.write_text("".join(f"{n} A\n" for n in names))
    lst = work / "fwd-list.txt"
    lst.write_text("some-other-name.example\n")
    ub, ub_port = unbound(work, local, [], role="harness")    # the upstream: not under test
    dd = us = ua = None
    try:
        dd, dd_port = dnsdist(work, ub_port)
        us, port, _, _ = nocpolicyd(work, policy(work, ub_port, lst))
        ua, aport, _, _ = nocpolicyd(work, policy(work, ub_port, lst), tag="-asyncio", io="asyncio")
    except BaseException:
        for p in (ua, us, dd, ub):
            if p is not None:
                p.stop()
        raise
    try:
        print(f"\n(dnsdist: {dd.threads} threads, packet cache off, every query forwarded to the unbound "
              "nocpolicyd forwards to; that unbound answers from local-data)")
        side_by_side("forwarded to unbound", [("nocpolicyd", port, us), ("nocpolicyd --dns-io asyncio", aport, ua),
                                              ("dnsdist", dd_port, dd)], qfile, a.runs, a.seconds, a.max_qps)
        ua.stop()
        if a.workers > 1 and PIN["server"]:
            print(f"\n(--workers {a.workers} not measured while pinned to one CPU: run with --pin none)")
        elif a.workers > 1:
            us.stop()
            us, port, _, _ = nocpolicyd(work, policy(work, ub_port, lst), workers=a.workers, tag="-w")
            side_by_side(f"forwarded, nocpolicyd --workers {a.workers}",
                         [(f"nocpolicyd --workers {a.workers}", port, us), ("dnsdist", dd_port, dd)], qfile,
                         a.runs, a.seconds, a.max_qps)
    finally:
        for p in (ua, us, dd, ub):
            p.stop()


def _big_policy(work: Path, ub_port: int) -> Path:
    if not BIG.exists():
        raise SystemExit(f"{BIG} not found (shared data absent): skipping the big-list parts")
    return policy(work, ub_port, BIG)


def part_biglist(work: Path, a) -> None:
    ub, ub_port = unbound(work, [], [])
    try:
        pol = _big_policy(work, ub_port)
        n = sum(1 for _ in gzip.open(BIG, "rt"))
        us, port, _, ready = nocpolicyd(work, pol)
        try:
            rss, hwm = us.rss_mb()
            lists = _ctl(us, "lists")["lists"][0]
            print(f"\n== 937k-domain list ({n} lines, {BIG.name})")
            print(f"  start to ready (policy + list parse + sockets): {ready:.2f} s   (target <= 3 s)")
            print(f"  entries in force: {lists['entries']}, skipped: {lists['parse']['skipped']}")
            print(f"  RSS after load: {rss:.0f} MB, peak RSS (VmHWM): {hwm:.0f} MB   (target <= 250 MB)")
        finally:
            us.stop()
    finally:
        ub.stop()


def _ctl(p: Proc, *args) -> dict:
    out = subprocess.run([str(BIN / "nocpolicyctl"), "--admin", p.admin, "--state-dir", str(p.state), "--json",
                          *args], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)


class Prober:
    """One query every 2 ms (after each answer) to ``dest[0]``; per window: sent, failed,
    answers over 50 ms, the slowest; the answers over 50 ms with their monotonic time."""

    def __init__(self, port: int):
        self.phases = {name: {"sent": 0, "failed": 0, "max_ms": 0.0, "over50": 0}
                       for name in ("unbound (peer)", "quiet", "reload")}
        self.phase = ["unbound (peer)"]
        self.dest = [port]
        self.stop = threading.Event()
        self.slow: list[tuple[float, float, str]] = []    # (monotonic send time, ms, window)

    def run(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
        qid = 0
        while not self.stop.is_set():
            qid = (qid + 1) & 0xFFFF
            q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" \
                + b"\x05probe\x0acc-default\x07example\x00\x00\x01\x00\x01"
            stats = self.phases[self.phase[0]]
            t0 = time.perf_counter()
            s.sendto(q, ("127.0.0.1", self.dest[0]))
            try:
                while True:
                    r = s.recv(512)
                    if r[:2] == q[:2]:
                        break
                ms = (time.perf_counter() - t0) * 1000
                stats["max_ms"] = max(stats["max_ms"], ms)
                stats["over50"] += ms > 50
                if ms > 50 and len(self.slow) < 1000:
                    self.slow.append((time.monotonic() - ms / 1000, ms, self.phase[0]))
            except OSError:
                stats["failed"] += 1
            stats["sent"] += 1
            time.sleep(0.002)
        s.close()


def part_reload(work: Path, a) -> None:
    ub, ub_port = unbound(work, [], [])
    try:
        pol = _big_policy(work, ub_port)
        us, port, _, _ = nocpolicyd(work, pol)
    except BaseException:
        ub.stop()
        raise
    names = gzip.open(BIG, "rt").read().split()
    rnd = random.Random(1)
    qfile = work / "reload.q"
    qfile.write_text("".join(f"{rnd.choice(names)} A\n" for _ in range(2000)))
    del names
    pr = Prober(ub_port)
    phases, phase, dest, stop, slow = pr.phases, pr.phase, pr.dest, pr.stop, pr.slow
    prober = pr.run

    try:
        before = _ctl(us, "lists")["lists"][0]
        rss0, _ = us.rss_mb()
        load = subprocess.Popen(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile), "-l",
                                 str(a.seconds + 15), "-Q", str(a.reload_qps), "-c", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        th = threading.Thread(target=prober)
        th.start()
        time.sleep(3)                      # the machine's own noise: the prober against unbound
        phase[0], dest[0] = "quiet", port
        target = pol / "lists" / BIG.name
        data = gzip.compress(gzip.open(BIG, "rb").read() + b"reload-marker.example\n", 1)
        time.sleep(3)                      # the quiet window: the same load, no reload
        phase[0] = "reload"
        t0 = time.monotonic()
        target.write_bytes(data)           # a changed list file -> the policy watcher reloads
        while time.monotonic() - t0 < 30:
            now = _ctl(us, "lists")["lists"][0]
            if now.get("sha256") != before.get("sha256"):
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        time.sleep(2)                      # the old list is freed after the swap
        stop.set()
        th.join()
        out = load.communicate(timeout=60)[0]
        qps = re.search(r"Queries per second:\s+([\d.]+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        rss1, hwm = us.rss_mb()
        print(f"\n== reload of the 937k list under load (dnsperf -Q {a.reload_qps} + a prober every 2 ms)")
        print(f"  file changed -> new list in force: {took:.2f} s; entries {before['entries']} -> {now['entries']}")
        for name, st in phases.items():
            print(f"  prober, {name + ' window:':<15} {st['sent']:>5} queries, {st['failed']} failed, "
                  f"{st['over50']} over 50 ms, max {st['max_ms']:.1f} ms")
        print(f"  dnsperf: {float(qps.group(1)) if qps else 0:.0f} qps, lost {lost.group(1) if lost else '?'}")
        print(f"  RSS before {rss0:.0f} MB, after {rss1:.0f} MB, peak {hwm:.0f} MB")
        if getattr(a, "slow_log", None):       # to lay beside nocpolicyd's NOCPOLICY_LAG_TRACE (same monotonic clock)
            with open(a.slow_log, "a") as f:
                f.writelines(f"{t * 1000:.1f} probe {w} {ms:.1f}ms\n" for t, ms, w in slow)
    finally:
        stop.set()
        us.stop()
        ub.stop()


PARTS = {"blocked": part_blocked, "forwarded": part_forwarded, "biglist": part_biglist, "reload": part_reload}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="blocked,forwarded,biglist,reload")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--max-qps", type=int, default=400_000, help="dnsperf -Q (bounds every run)")
    p.add_argument("--reload-qps", type=int, default=20_000)
    p.add_argument("--slow-log", help="reload part: append the probes over 50 ms (monotonic ms) to this file")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pin", default="none", help="SERVER_CPUS:HARNESS_CPUS for taskset: the server under "
                   "test (every tool alike) on the first, dnsperf and the upstream unbound on the second; "
                   "'none' for no pinning")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q: queries in flight")
    a = p.parse_args()
    OUTSTANDING[0] = a.outstanding
    if a.pin != "none":
        if shutil.which("taskset") is None:
            print("taskset is not installed (util-linux): use --pin none", file=sys.stderr)
            return 2
        PIN["server"], PIN["harness"] = a.pin.split(":")
    for tool in ("unbound", "dnsdist", "dnsperf"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    print(f"nocpolicy DNS bench, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {load_avg()}")
    with tempfile.TemporaryDirectory(prefix="dnsbench-") as tmp:
        for part in a.parts.split(","):
            PARTS[part.strip()](Path(tmp), a)
    print(f"\nload average at the end: {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
