#!/usr/bin/env python3
"""Answer-cache benchmarks (issue 19): nocpolicyd's cache side by side with dnsdist's packet cache.

Parts (loopback only, free ports, every run bounded in rate and time):

  zipf     Zipf (s = 1) mix over 200,000 names; the upstream is one unbound answering them from
           local-data (TTL 1 h, so nothing expires during the run). nocpolicyd (cache on) vs
           dnsdist 1.7 with a packet cache, both forwarding to that unbound. Each server first
           runs once through the query file (warm-up, not measured), then dnsperf alternates
           between them; medians of --runs. ``--pin 0:1`` pins each server to CPU 0 (per core).
  memory   1,000,000 distinct names (unbound `redirect` zone answers them all) pushed through a
           nocpolicyd whose cache may hold them: RSS before and after, entries, bytes.
  outage   nocpolicyd in front of unbound under a steady load of cached and uncached names; the
           unbound is killed in the middle and started again: answers per phase (stale with
           EDE 3, SERVFAIL and how long it took, fresh again), no restart of nocpolicyd.
  reload   dns_bench's reload of the 937k list under load, with the cache filled first
           (200,000 entries).
  system   CPU of every server process per answered query, same Zipf mix with 5 % names from
           the 937k Maltrail list: nocpolicyd (937k list, cache) + its unbound (cache on)
           vs one unbound with the 937k names as an RPZ zone (cache on); both resolve the
           other names from an authoritative unbound (harness, not counted).

    .venv/bin/python bench/cache_bench.py --parts zipf --runs 5
    .venv/bin/python bench/cache_bench.py --parts zipf --runs 5 --pin 0:1
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from itertools import accumulate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dns_bench as db  # noqa: E402  (same directory)

NAMES = 200_000
QUERIES = 1_000_000


def zipf_queries(path: Path, names: list[str], n: int, seed: int = 19) -> None:
    """``n`` A queries drawn from ``names`` with P(rank k) ~ 1/k (Zipf, s = 1)."""
    rnd = random.Random(seed)
    cum = list(accumulate(1.0 / k for k in range(1, len(names) + 1)))
    picks = rnd.choices(names, cum_weights=cum, k=n)
    path.write_text("".join(f"{x} A\n" for x in picks))


def dnsdist_cached(work: Path, upstream: int) -> tuple[db.Proc, int]:
    port = db.free_port()
    conf = work / f"dnsdist-pc-{port}.conf"
    conf.write_text(f"""setLocal("127.0.0.1:{port}")
newServer({{address="127.0.0.1:{upstream}", name="unbound", checkInterval=3600}})
setSecurityPollSuffix("")
setServerPolicy(firstAvailable)
pc = newPacketCache(1000000, {{maxTTL=86400, minTTL=0, temporaryFailureTTL=60, staleTTL=60, dontAge=false}})
getPool(""):setCache(pc)
""")
    p = db.Proc(["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)], work / f"dnsdist-{port}.log")
    db.wait_udp(port)
    p.threads = len(list(Path(f"/proc/{p.p.pid}/task").iterdir()))
    return p, port


def cache_policy(work: Path, upstream: int, list_file: Path, entries: int = 300_000,
                 max_bytes: str = "128MiB", fmt: str = "domains") -> Path:
    pol = db.policy(work, upstream, list_file, fmt)
    with open(pol / "dns.yaml", "a") as f:
        f.write(f"  cache:\n    max_entries: {entries}\n    max_bytes: {max_bytes}\n")
    return pol


def warm(port: int, qfile: Path, qps: int = 100_000, limit: int = 60) -> None:
    subprocess.run(db.pinned("harness", ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(qfile),
                                         "-n", "1", "-l", str(limit), "-Q", str(qps), "-c", "4", "-t", "2"]),
                   capture_output=True, timeout=limit + 60)


def cache_counts(p: db.Proc) -> dict:
    return db._ctl(p, "cache", "show")["total"]


def part_zipf(work: Path, a) -> None:
    names = [f"h{i}.zipf-bench.example" for i in range(NAMES)]
    local = [f"{n}. 3600 IN A 198.18.{i // 250 % 250}.{i % 250 + 1}" for i, n in enumerate(names)]
    qfile = work / "zipf.q"
    zipf_queries(qfile, names, QUERIES)
    lst = work / "zipf-list.txt"
    lst.write_text("some-other-name.example\n")
    blk = work / "zipf-all-listed.txt"
    blk.write_text("\n".join(names) + "\n")
    ub, ub_port = db.unbound(work, local, [], role="harness")
    dd = us = ub2 = old = None
    try:
        dd, dd_port = dnsdist_cached(work, ub_port)
        us, port, _, _ = db.nocpolicyd(work, cache_policy(work, ub_port, lst))
        ub2, port2, _, _ = db.nocpolicyd(work, cache_policy(work, ub_port, blk), tag="-blocked")
        peers = [("nocpolicyd (cache)", port, us), ("nocpolicyd, all names blocked", port2, ub2)]
        if a.ab:
            old, old_port, _, _ = ab_nocpolicyd(work, a.ab, cache_policy(work, ub_port, lst))
            peers.insert(1, (f"nocpolicyd {a.ab[:7]} (cache)", old_port, old))
        for _, prt, _ in [*peers, ("", dd_port, None)]:
            warm(prt, qfile)
        c0 = cache_counts(us)
        print(f"\n(dnsdist {dd.threads} threads, packet cache 1M entries; both warmed with one pass through "
              f"{QUERIES} Zipf queries over {NAMES} names; nocpolicyd cache after warm-up: {c0['entries']} "
              f"entries, {c0['bytes'] / 2**20:.0f} MiB)")
        # reference in the same runs: the same names all on a block list, answered from the
        # guard's per-customer blocked-answer table (the hot path the issue 4 figures measured)
        db.side_by_side("Zipf s=1 over 200k names, answer caches", [
            *peers, ("dnsdist (packet cache)", dd_port, dd)], qfile, a.runs, a.seconds, a.max_qps)
        c1 = cache_counts(us)
        hits, misses = c1["hits"] - c0["hits"], c1["misses"] - c0["misses"]
        print(f"  nocpolicyd during the measured runs: {hits} hits, {misses} misses "
              f"({100 * hits / max(1, hits + misses):.2f}% hit ratio)")
    finally:
        for p in (us, ub2, old, dd, ub):
            if p is not None:
                p.stop()


def ab_nocpolicyd(work: Path, commit: str, pol: Path):
    """nocpolicyd running the daemon code of ``commit`` (``git archive``; A/B in the same run)."""
    src = work / f"ab-{commit}"
    src.mkdir()
    tar = subprocess.run(["git", "archive", commit, "daemon"], cwd=Path(__file__).parent.parent,
                         capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
    c_loop = src / "daemon/nocpolicy/dns/_fastudp.c"
    if c_loop.exists():          # that commit's C loop, built beside its code (not in git)
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-Wno-missing-braces", f"-I{sysconfig.get_path('include')}",
                        str(c_loop), "-o", str(c_loop.with_name("_fastudp" + sysconfig.get_config_var("EXT_SUFFIX")))],
                       check=True)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src / "daemon")
    try:
        return db.nocpolicyd(work, pol, tag=f"-{commit[:7]}")
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def part_memory(work: Path, a) -> None:
    n = a.entries
    ub, ub_port = db.unbound(work, ['mem.example. 3600 IN A 198.18.0.1'], [], role="harness")
    conf = work / f"unbound-{ub_port}" / "unbound.conf"
    conf.write_text(conf.read_text().replace('    local-data: "mem.example.', '    local-zone: "mem.example." '
                                              'redirect\n    local-data: "mem.example.'))
    ub.stop()
    ub = db.Proc(["unbound", "-d", "-c", str(conf)], work / "unbound-mem.log", "harness")
    db.wait_udp(ub_port)
    lst = work / "mem-list.txt"
    lst.write_text("some-other-name.example\n")
    qfile = work / "mem.q"
    qfile.write_text("".join(f"m{i}.mem.example A\n" for i in range(n)))
    us, port, _, _ = db.nocpolicyd(work, cache_policy(work, ub_port, lst, entries=n + 10, max_bytes="1GiB"))
    try:
        rss0, _ = us.rss_mb()
        t0 = time.monotonic()
        warm(port, qfile, qps=40_000, limit=240)
        c = cache_counts(us)
        if c["entries"] < n:                     # queries lost on the busy machine: once more
            warm(port, qfile, qps=40_000, limit=240)
            c = cache_counts(us)
        took = time.monotonic() - t0
        rss1, hwm = us.rss_mb()
        print(f"\n== memory: {n} distinct names through nocpolicyd ({took:.0f} s)")
        print(f"  cache entries {c['entries']}, accounted bytes {c['bytes'] / 2**20:.0f} MiB")
        print(f"  RSS before {rss0:.0f} MB, after {rss1:.0f} MB (growth {rss1 - rss0:.0f} MB, "
              f"{(rss1 - rss0) * 2**20 / max(1, c['entries']):.0f} B/entry), peak {hwm:.0f} MB   "
              f"(target: 1M entries <= 300 MB)")
    finally:
        us.stop()
        ub.stop()


def _probe(port: int, name: str, qid: int, timeout: float = 3.0) -> tuple[int, list[int], float]:
    """(rcode, EDE codes, seconds) of one EDNS query; rcode -1 on timeout."""
    import dns.edns
    import dns.message
    q = dns.message.make_query(name, "A", use_edns=0)
    q.id = qid
    t0 = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        try:
            r = dns.message.from_wire(s.recv(4096))
        except (OSError, Exception):
            return -1, [], time.monotonic() - t0
    return r.rcode(), [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)], time.monotonic() - t0


def part_outage(work: Path, a) -> None:
    cached = [f"c{i}.outage.example" for i in range(2000)]
    uncached = [f"u{i}.outage.example" for i in range(2000)]
    local = [f"{n}. 5 IN A 198.18.1.{i % 250 + 1}" for i, n in enumerate(cached + uncached)]
    ub, ub_port = db.unbound(work, local, [], role="harness")
    lst = work / "outage-list.txt"
    lst.write_text("some-other-name.example\n")
    us, port, _, _ = db.nocpolicyd(work, cache_policy(work, ub_port, lst))
    conf = work / f"unbound-{ub_port}" / "unbound.conf"
    try:
        for _ in range(5):                       # every name cached (a probe may be lost on a busy host)
            for i, n in enumerate(cached):
                _probe(port, n, i)
            if cache_counts(us)["entries"] >= len(cached):
                break
        print(f"\n(cached before the kill: {cache_counts(us)['entries']} entries)")
        ub.p.kill()
        ub.p.wait()
        t_kill = time.monotonic()
        time.sleep(6)                            # every cached entry (TTL 5) has expired now
        res = {"cached": [], "uncached": []}
        for i, n in enumerate(cached):
            res["cached"].append(_probe(port, n, i))
        for i, n in enumerate(uncached[:300]):
            res["uncached"].append(_probe(port, n, i))
        stale = sum(1 for rc, ede, _ in res["cached"] if rc == 0 and ede == [3])
        sf = [t for rc, _, t in res["uncached"] if rc == 2]
        ub = db.Proc(["unbound", "-d", "-c", str(conf)], work / "unbound-restart.log", "harness")
        db.wait_udp(ub_port)
        t_back = time.monotonic()
        fresh_at = None
        while time.monotonic() - t_back < 30:
            rc, ede, _ = _probe(port, uncached[-1], 7)
            if rc == 0 and not ede:
                fresh_at = time.monotonic() - t_back
                break
            time.sleep(0.1)
        fresh = sum(1 for i, n in enumerate(cached[:500]) if _probe(port, n, i)[:2] == (0, []))
        print(f"\n== upstream killed (unbound SIGKILL {time.monotonic() - t_kill:.0f} s ago), nocpolicyd not restarted")
        print(f"  names cached before, asked after their TTL ran out: {stale}/{len(cached)} answered stale "
              f"(NOERROR, EDE 3)")
        print(f"  names never cached: {len(sf)}/{len(res['uncached'])} SERVFAIL, slowest "
              f"{max(sf) * 1000 if sf else 0:.0f} ms (upstream timeout 1 s)")
        print(f"  unbound back: fresh answers after {fresh_at if fresh_at is not None else -1:.2f} s; "
              f"then {fresh}/500 cached names answered fresh (no EDE)")
    finally:
        us.stop()
        ub.stop()


def part_reload(work: Path, a) -> None:
    """dns_bench's reload part with a redirect-zone upstream and the cache filled first."""
    orig_unbound, orig_nocpolicyd = db.unbound, db.nocpolicyd

    def unbound(work_, local, zones, role="server"):
        p, port = orig_unbound(work_, ["fill.example. 3600 IN A 198.18.0.2"], zones, role)
        conf = work_ / f"unbound-{port}" / "unbound.conf"
        conf.write_text(conf.read_text().replace('    local-data: "fill.example.',
                                                  '    local-zone: "fill.example." redirect\n    local-data: "fill.example.'))
        p.stop()
        p = db.Proc(["unbound", "-d", "-c", str(conf)], work_ / "unbound-fill.log", role)
        db.wait_udp(port)
        return p, port

    def nocpolicyd(work_, pol, *args, **kw):
        us, port, mport, ready = orig_nocpolicyd(work_, pol, *args, **kw)
        qfile = work_ / "fill.q"
        qfile.write_text("".join(f"f{i}.fill.example A\n" for i in range(200_000)))
        warm(port, qfile, qps=50_000)
        c = cache_counts(us)
        print(f"\n(cache filled before the reload: {c['entries']} entries, {c['bytes'] / 2**20:.0f} MiB)")
        return us, port, mport, ready

    db.unbound, db.nocpolicyd = unbound, nocpolicyd
    try:
        db.part_reload(work, a)
    finally:
        db.unbound, db.nocpolicyd = orig_unbound, orig_nocpolicyd


def unbound_conf(work: Path, tag: str, body: str, role: str) -> tuple[db.Proc, int]:
    """An unbound (cache on) with extra ``body`` lines in its server: section."""
    port = db.free_port()
    d = work / f"unbound-{tag}-{port}"
    d.mkdir()
    (d / "unbound.conf").write_text(f"""server:
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
    access-control: 127.0.0.0/8 allow
    so-rcvbuf: 4m
    do-not-query-localhost: no
    msg-cache-size: 128m
    rrset-cache-size: 256m
{body}
remote-control:
    control-enable: no
""")
    p = db.Proc(["unbound", "-d", "-c", str(d / "unbound.conf")], d / "log", role)
    db.wait_udp(port, timeout=300)
    return p, port


def part_system(work: Path, a) -> None:
    """CPU of all server processes per answered query: nocpolicyd + unbound vs unbound + RPZ."""
    import gzip
    names = [f"h{i}.zipf-bench.example" for i in range(NAMES)]
    listed = gzip.open(db.BIG, "rt").read().split()
    rnd = random.Random(5)
    cum = list(accumulate(1.0 / k for k in range(1, len(names) + 1)))
    picks = rnd.choices(names, cum_weights=cum, k=300_000)
    bad = rnd.sample(listed, 20_000)
    qfile = work / "system.q"
    qfile.write_text("".join(f"{rnd.choice(bad) if rnd.random() < 0.05 else x} A\n" for x in picks))
    rpz = work / "big.rpz"
    with open(rpz, "w") as f:
        f.write("$TTL 300\n@ IN SOA localhost. root.localhost. 1 3600 600 86400 300\n@ IN NS localhost.\n")
        for n in listed:
            if (n.replace(".", "").replace("-", "").replace("_", "").isalnum() and len(n) < 240
                    and all(0 < len(x) < 64 for x in n.split("."))):
                f.write(f"{n} CNAME .\n*.{n} CNAME .\n")
    auth_body = "\n".join(f'    local-data: "{n}. 3600 IN A 198.18.{i // 250 % 250}.{i % 250 + 1}"'
                           for i, n in enumerate(names)) + '\n    local-zone: "." static\n    module-config: "iterator"'
    auth, auth_port = unbound_conf(work, "auth", auth_body, "harness")
    fwd = f'forward-zone:\n    name: "."\n    forward-addr: 127.0.0.1@{auth_port}\nserver:'
    procs = []
    try:
        t0 = time.monotonic()
        u2, u2_port = unbound_conf(work, "rpz", f'    module-config: "respip iterator"\n{fwd}\nrpz:\n'
                                   f'    name: rpz.bench.\n    zonefile: "{rpz}"\nserver:', "server")
        procs.append(u2)
        print(f"\n(unbound with the RPZ ready after {time.monotonic() - t0:.0f} s, RSS {u2.rss_mb()[0]:.0f} MB)")
        u1, u1_port = unbound_conf(work, "up", f'    module-config: "iterator"\n{fwd}', "server")
        procs.append(u1)
        us, port, _, _ = db.nocpolicyd(work, cache_policy(work, u1_port, db.BIG))
        procs.append(us)
        sides = [("nocpolicyd + unbound", port, (us, u1)), ("unbound + RPZ", u2_port, (u2,))]
        if a.ab:                  # the same daemon at another commit, in front of the same unbound
            old, old_port, _, _ = ab_nocpolicyd(work, a.ab, cache_policy(work, u1_port, db.BIG))
            procs.append(old)
            sides.append((f"nocpolicyd {a.ab[:7]} + unbound", old_port, (old, u1)))
        for _, prt, _ in sides:
            warm(prt, qfile, qps=20_000)
        for qps in (int(x) for x in str(a.system_qps).split(",")):
            system_rate(sides, qfile, a, qps, us)
    finally:
        for p in procs:
            p.stop()
        auth.stop()


def system_rate(sides, qfile: Path, a, qps: int, us) -> None:
    """One rate of the system part: each side in turn (order alternating), CPU per answer."""
    res = {name: [] for name, _, _ in sides}
    own = []                  # nocpolicyd's own share of the first
    for r in range(a.runs):
        for name, prt, ps in (sides if r % 2 == 0 else sides[::-1]):
            c0 = [db.cpu_seconds(p.p.pid) for p in ps]
            d = db.dnsperf(prt, qfile, a.seconds, qps)
            c1 = [db.cpu_seconds(p.p.pid) for p in ps]
            n = max(1, d["qps"] * a.seconds)
            res[name].append((sum(c1) - sum(c0)) * 1e6 / n)
            if ps[0] is us:
                own.append((c1[0] - c0[0]) * 1e6 / n)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"== whole system, Zipf + 5 % listed names at -Q {qps}, CPU us per answered query "
          f"(all server processes), median of {a.runs}")
    for k, v in med.items():
        print(f"  {k:<30} {v:6.1f} us  (runs: {', '.join(f'{x:.1f}' for x in res[k])})  ratio vs "
              f"unbound + RPZ: {v / med['unbound + RPZ']:.2f}")
    print(f"  of which nocpolicyd itself: {statistics.median(own):.1f} us (runs: "
          f"{', '.join(f'{x:.1f}' for x in own)})", flush=True)


PARTS = {"system": part_system, "zipf": part_zipf, "memory": part_memory, "outage": part_outage, "reload": part_reload}


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="zipf,memory,outage")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--max-qps", type=int, default=400_000)
    p.add_argument("--reload-qps", type=int, default=20_000)
    p.add_argument("--slow-log", help="reload part: append the probes over 50 ms (monotonic ms) to this file")
    p.add_argument("--entries", type=int, default=1_000_000, help="memory part: distinct names")
    p.add_argument("--system-qps", default="15000", help="system part: dnsperf -Q (both sides); several: 15000,60000")
    p.add_argument("--ab", default="", help="zipf and system parts: also run nocpolicyd at this commit (A/B)")
    p.add_argument("--pin", default="none", help="SERVER_CPUS:HARNESS_CPUS (see dns_bench.py)")
    a = p.parse_args()
    if a.pin != "none":
        db.PIN["server"], db.PIN["harness"] = a.pin.split(":")
    for tool in ("unbound", "dnsdist", "dnsperf"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    print(f"nocpolicy answer-cache bench, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {db.load_avg()}")
    with tempfile.TemporaryDirectory(prefix="cachebench-") as tmp:
        for part in a.parts.split(","):
            PARTS[part.strip()](Path(tmp), a)
    print(f"\nload average at the end: {db.load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
