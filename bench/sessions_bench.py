#!/usr/bin/env python3
"""Sessions benchmark (issue 15), every part with its peer in the same run, loopback only.

Parts:
  inventory  a 1,000,000-row CSV inventory: load_policy time and peak RSS beside the example
             policy alone (each in a fresh process), a reload with 1% of rows changed
             (previous rows reused), and nocpolicyd start-to-ready with it vs without it.
  ingest     RADIUS accounting: FreeRADIUS radclient (-f FILE -p PARALLEL) sends N distinct
             Start requests to nocpolicyd (each answered only once durable) and, in the same
             run, to a bare pyrad responder (decode, verify, answer; no store) -- the ceiling
             of the load generator. Requests/s, and per CPU-second of the server.
  whois      10,000,000 history rows written into a state store, then whois lookups (random
             addresses, times, one in ten through a CGNAT pool): median and p99 latency.
  dns        nocpolicyd with 1,000,000 live sessions (fed by accounting) vs the static-only
             policy, dnsperf against each in turn from the same query file (needs the sessions
             wired into the DNS guard's client lookup); live table RSS.

    .venv/bin/python bench/sessions_bench.py --parts inventory,ingest,whois --runs 3
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests"))
SECRET = "bench-secret"


def free_udp_tcp_port() -> int:
    for _ in range(200):
        port = random.randrange(20000, 30000)
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- inventory --------------------------------------------------------------------------

def write_inventory(path: Path, rows: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as f:
        f.write("id,name,plan,prefixes,logins,tags,nodes,contact\n")
        for i in range(rows):
            net = ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.0.0.0")) + i * 4)
            v6 = f"2001:db8:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}::/64"
            f.write(f"h{i:07d},Customer {i},home-100m,{net}/30 {v6},u{i}@isp.example,"
                    f"fiber-home,edge-tokyo-{rnd.randrange(1, 3)},c{i}@example.jp\n")


LOAD_CHILD = """
import resource, sys, time
t0 = time.perf_counter()
c0 = time.process_time()
from nocpolicy.policy.load import load_policy
p = load_policy(sys.argv[1])
t1 = time.perf_counter()
print(t1 - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(p.customers),
      time.process_time() - c0)
if len(sys.argv) > 2:   # reload with 1% changed
    import pathlib
    f = pathlib.Path(sys.argv[1]) / "customers.csv"
    lines = f.read_text().split("\\n")
    for i in range(1, len(lines) - 1, 100):
        lines[i] = lines[i].replace(",Customer ", ",Renamed ")
    f.write_text("\\n".join(lines))
    t2 = time.perf_counter()
    q = load_policy(sys.argv[1], previous=p)
    c2 = time.process_time()
    print(time.perf_counter() - t2, sum(1 for c in q.customers if c.name.startswith("Renamed")),
          time.process_time() - c2)
"""


def part_inventory(args) -> None:
    rows = args.rows
    with tempfile.TemporaryDirectory(prefix="nocp-inv-") as tmp:
        tmp = Path(tmp)
        plain = tmp / "plain"
        shutil.copytree(REPO / "policies", plain)
        big = tmp / "big"
        shutil.copytree(REPO / "policies", big)
        (big / "inventory.yaml").write_text("inventory:\n  file: customers.csv\n")
        t = time.perf_counter()
        write_inventory(big / "customers.csv", rows)
        print(f"inventory: wrote {rows} rows ({(big / 'customers.csv').stat().st_size / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t:.1f}s")
        loads, rss, reloads = [], [], []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(plain)], capture_output=True,
                                 text=True, check=True).stdout.split()
            base_t, base_rss = float(out[0]), float(out[1])
            shutil.copy(big / "customers.csv", tmp / "orig.csv")
            out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(big), "reload"], capture_output=True,
                                 text=True, check=True).stdout.split()
            shutil.copy(tmp / "orig.csv", big / "customers.csv")
            loads.append((float(out[0]), float(out[3])))
            rss.append(float(out[1]) - base_rss)
            reloads.append((float(out[4]), float(out[6])))
            print(f"  run: example policy {base_t:.2f}s {base_rss:.0f} MB; with {out[2]} customers "
                  f"{float(out[0]):.2f}s ({float(out[3]):.2f}s CPU) {float(out[1]):.0f} MB; reload 1% changed "
                  f"({out[5]} rows) {float(out[4]):.2f}s ({float(out[6]):.2f}s CPU)")
        lw, lc = statistics.median(x[0] for x in loads), statistics.median(x[1] for x in loads)
        rw, rc = statistics.median(x[0] for x in reloads), statistics.median(x[1] for x in reloads)
        print(f"inventory: load_policy median {lw:.2f}s wall, {lc:.2f}s CPU (target <= 10 s), "
              f"+{statistics.median(rss):.0f} MB peak RSS over the example policy (target <= 600 MB); "
              f"reload with 1% changed {rw:.2f}s wall, {rc:.2f}s CPU ({lc / rc:.1f}x less CPU than a first load)")
        daemon_ready(plain, big, args.runs)


def daemon_ready(plain: Path, big: Path, runs: int) -> None:
    from helpers import DaemonProcess
    results = {"example": [], "inventory": []}
    for _ in range(runs):
        for name, pol in (("example", plain), ("inventory", big)):
            with tempfile.TemporaryDirectory(prefix="nocp-d-") as w:
                d = DaemonProcess(Path(w), policies=pol)
                t = time.perf_counter()
                d.start(wait=False)
                d.wait_ready(timeout=300)
                results[name].append((time.perf_counter() - t, rss_mb(d.proc.pid)))
                d.stop(timeout=60)
    e = statistics.median(x[0] for x in results["example"])
    i = statistics.median(x[0] for x in results["inventory"])
    er = statistics.median(x[1] for x in results["example"])
    ir = statistics.median(x[1] for x in results["inventory"])
    print(f"inventory: nocpolicyd start to ready {i:.1f}s with the inventory vs {e:.1f}s without "
          f"(in force: every component prepared); RSS {ir:.0f} MB vs {er:.0f} MB (+{ir - er:.0f} MB)")


# -- ingest -----------------------------------------------------------------------------

def radclient_file(path: Path, n: int, offset: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            k = offset + i
            ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + k)
            f.write(f'Acct-Status-Type = Start\nAcct-Session-Id = "B{k}"\nUser-Name = "u{k}@isp.example"\n'
                    f'NAS-Identifier = "bng1"\nFramed-IP-Address = {ip}\n\n')


PYRAD_PEER = """
import socket, sys
from pyrad import packet as rp
sys.path.insert(0, sys.argv[2])
from nocpolicy.sessions.radius import dictionary
d = dictionary()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
secret = sys.argv[3].encode()
while True:
    data, addr = s.recvfrom(4096)
    p = rp.AcctPacket(packet=data, secret=secret, dict=d)
    if p.VerifyAcctRequest():
        p["Acct-Status-Type"]; p["Framed-IP-Address"]; p["User-Name"]; p["Acct-Session-Id"]
        s.sendto(p.CreateReply().ReplyPacket(), addr)
"""


def encode_requests(n: int, offset: int, sockets: int) -> list[list[bytes]]:
    """n distinct Accounting-Request Starts encoded by pyrad (real RADIUS, real Request
    Authenticators), dealt to ``sockets`` senders; on each sender the k-th packet has
    Identifier k % 256 (unique among the at most 256 in flight)."""
    from pyrad import packet as rp

    from nocpolicy.sessions.radius import dictionary
    d = dictionary()
    out: list[list[bytes]] = [[] for _ in range(sockets)]
    for i in range(n):
        k = offset + i
        q = out[i % sockets]
        p = rp.AcctPacket(id=len(q) % 256, secret=SECRET.encode(), dict=d)
        p["Acct-Status-Type"] = 1
        p["Acct-Session-Id"] = f"G{k}"
        p["User-Name"] = f"u{k}@isp.example"
        p["NAS-Identifier"] = "bng1"
        p["Framed-IP-Address"] = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + k))
        q.append(p.RequestPacket())
    return out


def run_generator(port: int, queues: list[list[bytes]], window: int = 32,
                  timeout: float = 300.0) -> tuple[float, int]:
    """Send every packet, at most ``window`` outstanding per socket; an answer is matched by
    socket + Identifier; unanswered requests are retransmitted (same bytes) after 3 s.
    Returns (seconds, answers)."""
    import selectors
    sel = selectors.DefaultSelector()
    senders = []
    for q in queues:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_READ, len(senders))
        senders.append({"sock": s, "queue": q, "next": 0, "out": {}})
    total = sum(len(q) for q in queues)
    answered = 0

    def fill(st):
        while len(st["out"]) < window and st["next"] < len(st["queue"]):
            wire = st["queue"][st["next"]]
            st["next"] += 1
            st["out"][wire[1]] = (time.perf_counter(), wire)
            try:
                st["sock"].send(wire)
            except BlockingIOError:
                pass
    t = time.perf_counter()
    for st in senders:
        fill(st)
    deadline = t + timeout
    while answered < total and time.perf_counter() < deadline:
        for key, _ in sel.select(0.5):
            st = senders[key.data]
            while True:
                try:
                    data = st["sock"].recv(4096)
                except BlockingIOError:
                    break
                if st["out"].pop(data[1], None) is not None:
                    answered += 1
            fill(st)
        now = time.perf_counter()
        for st in senders:
            for ident, (sent, wire) in list(st["out"].items()):
                if now - sent > 3.0:
                    st["out"][ident] = (now, wire)
                    st["sock"].send(wire)
    took = time.perf_counter() - t
    for st in senders:
        st["sock"].close()
    return took, answered


def run_radclient(port: int, file: Path, parallel: int) -> tuple[float, int]:
    t = time.perf_counter()
    p = subprocess.run(["radclient", "-q", "-s", "-r", "5", "-t", "5", "-p", str(parallel), "-f", str(file),
                        f"127.0.0.1:{port}", "acct", SECRET], capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t
    ok = sum(int(x) for x in __import__("re").findall(r"Accepted\s*:\s*(\d+)", p.stdout + p.stderr))
    return took, ok


def part_ingest(args) -> None:
    from helpers import DaemonProcess
    from sessions_fixtures import sessions_policy
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="nocp-ing-") as tmp:
        tmp = Path(tmp)
        port = free_udp_tcp_port()
        pol = sessions_policy(tmp, port, secret=SECRET)
        d = DaemonProcess(tmp, policies=pol).start()
        peer_port = free_udp_tcp_port()
        peer = subprocess.Popen([sys.executable, "-c", PYRAD_PEER, str(peer_port), str(REPO / "daemon"), SECRET])
        ours, theirs = [], []
        try:
            f = tmp / "radclient.txt"
            radclient_file(f, 2000, 10_000_000)
            for name, p in (("nocpolicyd", port), ("pyrad-bare", peer_port)):
                took, ok = run_radclient(p, f, args.parallel)
                print(f"  radclient -p {args.parallel}: {name} {ok}/2000 in {took:.2f}s ({ok / took:,.0f} req/s: "
                      "radclient itself is the limit, so the load below comes from a pyrad-encoded generator)")
            for run in range(args.runs):
                order = [("nocpolicyd", port, d.proc.pid), ("pyrad-bare", peer_port, peer.pid)]
                if run % 2:
                    order.reverse()
                for name, p, pid in order:
                    queues = encode_requests(n, (2 * run + (name == "pyrad-bare")) * n, args.senders)
                    c0 = cpu_seconds(pid)
                    took, ok = run_generator(p, queues, args.window)
                    cpu = cpu_seconds(pid) - c0
                    rec = (ok / took, ok / cpu if cpu else 0.0, ok, cpu / took)
                    (ours if name == "nocpolicyd" else theirs).append(rec)
                    print(f"  run {run}: {name:<11} {ok}/{n} answered in {took:.2f}s: {rec[0]:,.0f} req/s, "
                          f"{rec[1]:,.0f} per CPU-second ({rec[3]:.0%} CPU)")
            active = d.metric("nocpolicy_sessions_active", {"source": "radius"})
            commits = d.metric("nocpolicy_sessions_commits_total", {"result": "ok"})
        finally:
            peer.terminate()
            peer.wait()
            d.stop(timeout=60)
        o, t = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in theirs)
        oc = statistics.median(x[1] for x in ours)
        print(f"ingest: nocpolicyd {o:,.0f} req/s ({oc:,.0f} per CPU-second: target >= 10,000 on one core), "
              f"durable before each answer ({commits:.0f} group commits for {active:.0f} sessions); "
              f"bare pyrad responder {t:,.0f} req/s; ratio {o / t:.2f}")


# -- whois ------------------------------------------------------------------------------

def part_whois(args) -> None:
    from nocpolicy.policy.sessions import NatPool
    from nocpolicy.sessions.book import Book
    from nocpolicy.sessions.history import History
    from nocpolicy.sessions.model import Event, SessionInfo
    from nocpolicy.sessions.table import LiveTable
    from nocpolicy.sessions.whois import nat_forward, whois
    from nocpolicy.store import Store
    rows = args.history
    pool = NatPool("cgn", ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("100.64.0.0/16"),
                   1024, 65535, 256)
    with tempfile.TemporaryDirectory(prefix="nocp-who-") as tmp:
        store = Store(Path(tmp) / "nocpolicy.db")
        h = History(store)
        h._w.execute("PRAGMA synchronous=OFF")      # bulk fill only; lookups are what is measured
        book = Book(LiveTable(), max_active=rows + 1)
        t = time.perf_counter()
        addrs = 65536 * 4                            # 100.64.0.0/14 reused over time: ~38 sessions each
        step = 180 * 86400 / (rows / addrs)
        batch = None
        from nocpolicy.sessions.model import Ops
        batch = Ops()
        for i in range(rows):
            a, gen = i % addrs, i // addrs
            ip = int(ipaddress.IPv4Address("100.64.0.0")) + a
            start = 1_750_000_000 + gen * step + (a % 1000)
            v6 = (6, (0x20010db8 << 96) | (a << 72), 56)
            info = SessionInfo("radius", "bng1", f"S{i}", f"h{a:07d}", addrs=((4, ip, 32), v6), interval=300)
            batch.extend(book.apply(Event("start", info, start)))
            batch.extend(book.apply(Event("stop", info, start + step * 0.9)))
            if len(batch.inserts) >= 50_000:
                h.write(batch)
                batch = Ops()
            if i and i % 2_000_000 == 0:
                print(f"  {i:,} rows written ({time.perf_counter() - t:.0f}s)")
        h.write(batch)
        print(f"whois: {h.count():,} sessions ({2 * rows:,} address rows) written in "
              f"{time.perf_counter() - t:.0f}s; db {Path(h.path).stat().st_size / 1e9:.1f} GB")
        rnd = random.Random(7)
        lat = []
        found = 0
        for q in range(args.lookups):
            a = rnd.randrange(addrs)
            gen = rnd.randrange(rows // addrs)
            ts = 1_750_000_000 + gen * step + (a % 1000) + step * 0.5
            ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + a)
            port = None
            target = str(ip)
            if q % 10 == 0 and ip in pool.internal:
                target, (lo, hi) = nat_forward(pool, ip)
                port = lo + 3
            elif q % 10 == 1:
                target = str(ipaddress.IPv6Address((0x20010db8 << 96) | (a << 72) | 0x1234))
            t0 = time.perf_counter()
            out = whois(h, [pool], target, ts, port)
            lat.append(time.perf_counter() - t0)
            found += bool(out["matches"])
        lat.sort()
        print(f"whois: {args.lookups} lookups over {rows:,} history rows: median {statistics.median(lat) * 1e3:.2f} ms, "
              f"p99 {lat[int(len(lat) * 0.99)] * 1e3:.2f} ms, max {lat[-1] * 1e3:.1f} ms (target <= 10 ms); "
              f"{found} found")
        h.close()
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="inventory,ingest,whois")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000, help="inventory rows")
    ap.add_argument("--requests", type=int, default=30_000, help="accounting requests per run")
    ap.add_argument("--parallel", type=int, default=64, help="radclient -p (outstanding requests)")
    ap.add_argument("--senders", type=int, default=4, help="generator sockets")
    ap.add_argument("--window", type=int, default=32, help="outstanding requests per generator socket")
    ap.add_argument("--history", type=int, default=10_000_000, help="whois history rows")
    ap.add_argument("--lookups", type=int, default=2000)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "daemon"))
    for part in args.parts.split(","):
        {"inventory": part_inventory, "ingest": part_ingest, "whois": part_whois}[part](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
