#!/usr/bin/env python3
"""How many DNS queries per second live capture keeps up with (bounded: ~1 minute).

A namespace the script creates sends DNS queries with dnsperf across a veth
pair to unbound (local-data) on the root end, at stepped rates. Side by side on
the same traffic, in the same run:

* nocpolicyd   -- the real daemon, detect.capture on the root end of the veth
                  (hand-written BPF, hand parsing, the guard's verdict per lookup);
                  read from nocpolicy_detect_observed_total{source="capture"};
* scapy sniff  -- the textbook scapy capture: sniff(prn=...) with scapy's own
                  dissection, counting DNS queries (the peer).

A rate is "kept up with" when >= 99% of the queries dnsperf sent were seen.
Root only; traffic stays inside the namespace and the veth pair.
Usage: sudo /tmp/venv/bin/python bench/detect_capture_bench.py [--rates 5000,20000,50000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import DaemonProcess, free_port, wait_for  # noqa: E402

SNIFF = """
import sys, time
from scapy.all import sniff, DNS, UDP, bind_layers
bind_layers(UDP, DNS, dport=int(sys.argv[3]))
bind_layers(UDP, DNS, sport=int(sys.argv[3]))
n = 0
def cb(p):
    global n
    if p.haslayer(DNS) and p[DNS].qr == 0:
        n += 1
def ready():
    print("ready", flush=True)
sniff(iface=sys.argv[1], prn=cb, store=False, timeout=float(sys.argv[2]), started_callback=ready)
print(n, flush=True)
"""


def sh(*a, check=True):
    return subprocess.run(a, capture_output=True, text=True, check=check)


def dnsperf(ns, server, port, qfile, rate, seconds) -> int:
    out = sh("ip", "netns", "exec", ns, "dnsperf", "-s", server, "-p", str(port), "-d", qfile,
             "-l", str(seconds), "-Q", str(rate), "-c", "4", "-q", "200", check=False).stdout
    m = re.search(r"Queries sent:\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="5000,20000,50000")
    ap.add_argument("--seconds", type=float, default=4)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    rates = [int(r) for r in args.rates.split(",")]
    secs = min(args.seconds, 10)
    tag = f"{random.randrange(16**5):05x}"
    ns, hif, pif = f"nocpb{tag}", f"nbh{tag}", f"nbp{tag}"
    net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
    tmp = Path(tempfile.mkdtemp(prefix="detect-bench-"))
    procs = []
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", hif, "type", "veth", "peer", "name", pif)
        sh("ip", "link", "set", pif, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", hif)
        sh("ip", "link", "set", hif, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", pif)
        sh("ip", "-n", ns, "link", "set", pif, "up")
        port = free_port(host=f"{net}.1")
        (tmp / "unbound.conf").write_text(textwrap.dedent(f"""\
            server:
              interface: {net}.1@{port}
              access-control: {net}.0/24 allow
              username: ""
              chroot: ""
              directory: "{tmp}"
              pidfile: ""
              use-syslog: no
              do-daemonize: no
              num-threads: 1
              local-zone: "test." nodefault
              local-zone: "example.test." static
              local-data: "www.example.test. A 192.0.2.7"
              local-data: "cc.example.test. A 203.0.113.66"
            """))
        procs.append(subprocess.Popen(["unbound", "-d", "-c", str(tmp / "unbound.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        qfile = tmp / "queries.txt"
        qfile.write_text("www.example.test A\n" * 19 + "cc.example.test A\n")
        pol = tmp / "policies"
        (pol / "lists").mkdir(parents=True)
        (pol / "lists" / "cc.txt").write_text("cc.example.test\n")
        (pol / "customers.yaml").write_text(f"customers:\n  - {{id: c1, name: c1, prefixes: [{net}.0/24]}}\n")
        (pol / "dns.yaml").write_text("dns:\n  lists:\n    - {id: cc, class: security, source: lists/cc.txt}\n")
        (pol / "detect.yaml").write_text(f"detect:\n  capture:\n    - {{interface: {hif}, port: {port}}}\n"
                                         "  enforce: [events]\n")
        d = DaemonProcess(tmp, policies=pol).start()
        wait_for(lambda: dnsperf(ns, f"{net}.1", port, str(qfile), 100, 1) > 0, 10, what="unbound")

        def observed():
            return d.metric("nocpolicy_detect_observed_total", {"source": "capture"}) or 0.0

        def drops():
            return d.metric("nocpolicy_detect_capture_kernel_drops_total") or 0.0

        print(f"{'offered qps':>12} {'sent':>8} | {'nocpolicyd seen':>16} {'%':>6} {'kdrops':>7} | "
              f"{'scapy sniff seen':>17} {'%':>6}")
        for rate in rates:
            before, dr = observed(), drops()
            sent = dnsperf(ns, f"{net}.1", port, str(qfile), rate, secs)
            try:
                wait_for(lambda b=before, s=sent: observed() - b >= 2 * s * 0.999, 3, what="capture to drain")
            except TimeoutError:
                pass
            seen = (observed() - before) / 2          # query + response per lookup
            nd = drops() - dr
            sniffer = subprocess.Popen([sys.executable, "-c", SNIFF, hif, str(secs + 3), str(port)],
                                       stdout=subprocess.PIPE, text=True)
            assert sniffer.stdout.readline().strip() == "ready"
            sent2 = dnsperf(ns, f"{net}.1", port, str(qfile), rate, secs)
            got = int((sniffer.communicate(timeout=60)[0] or "0").strip() or 0)
            print(f"{rate:>12} {sent:>8} | {seen:>16.0f} {100 * seen / max(sent, 1):>5.1f}% {nd:>7.0f} | "
                  f"{got:>17} {100 * got / max(sent2, 1):>5.1f}%  (sent {sent2})")
        d.stop()
    finally:
        for p in procs:
            p.terminate()
            p.wait(5)
        sh("ip", "link", "del", hif, check=False)
        sh("ip", "netns", "del", ns, check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
