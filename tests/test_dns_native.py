"""The C listener (``--dns-io native``, dns/_fastudp.c) and the Python loop (``--dns-io batched``)
are one behaviour: the same queries to both give the same answers, counters and detections.

Real nocpolicyd processes side by side, a real unbound upstream, dnspython on loopback. The
queries walk every path the C code takes over (repeated blocked names, children of a blocked
parent as DGA malware asks them, cache hits, mixed-case questions, an opted-out customer, a
source over its rate limit) and the ones it hands back to Python (first sight of a name,
forwarded names, refused sources).
"""

from __future__ import annotations

import random
import socket
import time

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, wait_for

BLOCKED_QPS = 60
BURST = 600                 # blocked queries sent at once: 10 s of the limit
LOCAL_DATA = ["www.example.org. 300 IN A 192.0.2.80", "MixedCase.example.org. 300 IN A 192.0.2.81"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ub = Unbound(tmp_path_factory.mktemp("ub"), LOCAL_DATA).start()
    daemons = {}
    try:
        for mode in ("native", "batched"):
            tmp = tmp_path_factory.mktemp(mode)
            pol = dns_policy(tmp, ub.port)
            with open(pol / "dns.yaml", "a") as f:      # only a burst reaches the blocked limit
                f.write(f"  ratelimit:\n    qps: 100000\n    blocked_qps: {BLOCKED_QPS}\n")
            d = DaemonProcess(tmp, policies=pol, extra_args=["--dns-io", mode]).start()
            daemons[mode] = d
        yield daemons
    finally:
        for d in daemons.values():
            d.stop()
        ub.stop()


def ask(port: int, name: str, source: str = "127.0.0.1", qid: int = 0) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    q.id = qid
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3, source=source)


def shape(r: dns.message.Message) -> tuple:
    """Everything a client sees but the TTLs (a cached answer's TTL counts down)."""
    return (r.id, r.flags, r.rcode(), [(q.name.to_text(), q.rdtype) for q in r.question],
            sorted((rr.name.to_text(), rr.rdtype, sorted(x.to_text() for x in rr)) for rr in r.answer),
            sorted((rr.name.to_text(), rr.rdtype) for rr in r.authority),
            [(o.code, o.text) for o in r.options if isinstance(o, dns.edns.EDEOption)])


def queries() -> list[tuple[str, str]]:
    """(name, source): every path twice or more, in an order the two daemons both get."""
    rnd = random.Random(7)
    out = [("bardubar.com", "127.0.0.1")] * 4                     # blocked, then its table
    for i in range(40):                                           # a DGA under a listed parent
        label = "".join(rnd.choice("abcdefghXYZ0123") for _ in range(10)) + str(i)
        out.append((f"{label}.bardubar.com", "127.0.0.1"))
    out += [("www.example.org", "127.0.0.1")] * 4                 # forwarded, then the cache
    out += [("WwW.ExAmPlE.oRg", "127.0.0.1"), ("mixedcase.EXAMPLE.org", "127.0.0.1")] * 2
    out += [("bardubar.com", "127.0.0.2")] * 3                    # opted out: forwarded
    out += [("csam.example", "127.0.0.2")] * 3                    # mandatory: blocked for everyone
    out += [("www.example.org", "127.0.0.9")] * 2                 # unknown client, protected
    return out


def test_both_loops_answer_alike(pair):
    native, batched = pair["native"], pair["batched"]
    assert "UDP I/O: native" in native.log(), native.log()[-2000:]
    assert "UDP I/O: batched" in batched.log(), batched.log()[-2000:]
    got = {}
    for mode, d in pair.items():
        got[mode] = []
        for i, (name, src) in enumerate(queries()):
            got[mode].append(shape(ask(d.dns_port, name, src, qid=1000 + i)))
    for i, (a, b) in enumerate(zip(got["native"], got["batched"], strict=True)):
        assert a == b, (i, queries()[i], a, b)
    # the paths were taken: the parent and its DGA children blocked, letter case kept
    assert [s[2] for s in got["native"][:44]] == [dns.rcode.NXDOMAIN] * 44
    assert got["native"][4][3][0][0].startswith(queries()[4][0].split(".")[0])
    assert got["native"][48][3][0][0] == "WwW.ExAmPlE.oRg."


def _counters(d: DaemonProcess) -> dict:
    out = {}
    for line in d.metrics().splitlines():
        if line.startswith(("nocpolicy_dns_responses_total", "nocpolicy_dns_queries_total",
                            "nocpolicy_dns_blocked_total", "nocpolicy_dns_cache_hits_total",
                            "nocpolicy_dns_ratelimited_total")):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def test_both_loops_count_alike(pair):
    """Runs after the answers test and before the bursts: both daemons got the same queries, so every counter a
    dashboard reads (responses by rcode, blocks by list, cache hits, rate-limited) and the
    detection log agree."""
    native, batched = pair["native"], pair["batched"]
    deadline = time.monotonic() + 20
    while True:                            # counters of the C loop are added per batch; blocks per drain
        a, b = _counters(native), _counters(batched)
        if a == b or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert a == b
    assert a['nocpolicy_dns_queries_total{transport="udp"}'] >= len(queries())
    assert any(k.startswith("nocpolicy_dns_cache_hits_total") and v > 0 for k, v in a.items()), a

    da, db = ([{k: v for k, v in row.items() if k not in ("first", "last")}
               for row in d.ctl_json("detections", "--summary", "--since", "1h")["summary"]]
              for d in (native, batched))
    assert da == db
    assert {(r["list"], r["customer"], r["count"]) for r in da} == {("cc", "c-home", 44), ("csam", "c-optout", 3)}


def burst(port: int, source: str, n: int) -> int:
    """n blocked queries from one socket at once; how many were answered (without TC)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for i in range(n):
            q = dns.message.make_query(f"b{i}.bardubar.com", "A")
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", port))
        s.settimeout(1.5)
        answered = 0
        try:
            while True:
                r = dns.message.from_wire(s.recv(4096))
                answered += not r.flags & dns.flags.TC
        except TimeoutError:
            pass
    return answered


@pytest.mark.parametrize("mode", ["native", "batched"])
def test_blocked_answer_limit_holds_in_both_loops(pair, mode):
    """A burst of blocked queries from one source is cut to its blocked_qps (what is over is
    dropped or answered TC=1) and counted; the C loop hands these to the limiter like Python."""
    d = pair[mode]
    before = _limited(d)
    answered = burst(d.dns_port, "127.0.0.5", BURST)
    assert 0 < answered <= BLOCKED_QPS * 4, answered       # the burst spans at most a few seconds
    wait_for(lambda: _limited(d) >= BURST - answered + before, 10, what="every limited blocked query counted")


def _limited(d: DaemonProcess) -> float:
    return sum(v for k, v in _counters(d).items()
               if k.startswith("nocpolicy_dns_ratelimited_total{") and 'limit="blocked"' in k)


def test_mutated_and_random_datagrams_never_stop_the_c_loop(pair):
    """Hostile input at the C loop: 30,000 datagrams (mutated real queries for every path it
    takes, cut ones, random bytes, first-label lengths past the datagram, junk after the
    question) from four sources; the daemon keeps running, logs no failure and answers."""
    d = pair["native"]
    rnd = random.Random(45)
    seeds = [dns.message.make_query(n, t, use_edns=e, payload=1232).to_wire()
             for n in ("bardubar.com", "x1.bardubar.com", "www.example.org", "csam.example", "ads.tracker.example")
             for t in ("A", "AAAA", "ANY") for e in (None, 0)]
    socks = []
    for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9"):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((src, 0))
        socks.append(u)
    try:
        for i in range(30_000):
            q = bytearray(rnd.choice(seeds))
            k = rnd.random()
            if k < 0.3:
                for _ in range(rnd.randint(1, 6)):
                    q[rnd.randrange(len(q))] = rnd.randrange(256)
            elif k < 0.45:
                q = q[:rnd.randrange(len(q) + 1)]
            elif k < 0.55:
                q = bytearray(rnd.randbytes(rnd.randrange(600)))
            elif k < 0.65 and len(q) > 12:
                q[12] = rnd.randrange(256)
            elif k < 0.75:
                q += rnd.randbytes(rnd.randrange(1, 3000))
            socks[i % 4].sendto(bytes(q), ("127.0.0.1", d.dns_port))
            if i % 500 == 499:                   # let the guard keep up: no drops at the socket
                wait_for(lambda: _queued(d.dns_port) < 50_000, 20, what="the guard reading its socket")
    finally:
        for u in socks:
            u.close()
    assert d.proc.poll() is None
    wait_for(lambda: _answers(d.dns_port), 30, what="an answer after the fuzz")
    log = d.log()
    assert not any(s in log for s in ("Traceback", "query path error", "Exception ignored")), log[-3000:]


def _queued(port: int) -> int:
    """Bytes waiting in the guard's UDP receive queue (/proc/net/udp)."""
    for line in open("/proc/net/udp").read().splitlines()[1:]:
        cols = line.split()
        if cols[1].endswith(f":{port:04X}"):
            return int(cols[4].split(":")[1], 16)
    return 0


def _answers(port: int) -> bool:
    try:
        return ask(port, "bardubar.com").rcode() == dns.rcode.NXDOMAIN
    except dns.exception.Timeout:
        return False
