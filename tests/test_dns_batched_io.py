"""The DNS guard's UDP I/O (``--dns-io``): batched recvmmsg/sendmmsg and asyncio's transports.

A real nocpolicyd per I/O mode, a real unbound upstream, dnspython and raw sockets
on loopback. Both modes must behave the same for clients; the batched one must
also survive bursts (several datagrams per system call), oversized datagrams
(cut by its 4 KiB receive slots), answers longer than a send slot and dead
upstreams (ICMP errors on its connected sockets).
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from conftest import need_root_netns
from dns_fixtures import Unbound, dns_policy
from helpers import BIN, DaemonProcess, free_port, http_get, sh, udp_exchange, wait_for

MODES = ("native", "batched", "asyncio")     # C loop, Python recvmmsg loop, asyncio transports
BURST_IP = "192.0.2.99"
TXT_STRINGS = [f"t{i:02d}" + "x" * 197 for i in range(30)]     # 30 x 200 bytes: ~6.4 KB answer
LOCAL_DATA = [
    "www.example.org. 300 IN A 192.0.2.80",
    "MixedCase.example.org. 300 IN A 192.0.2.81",
    f"burst.example. 300 IN A {BURST_IP}",
    *(f"bigtxt.example.org. 300 IN TXT {s}" for s in TXT_STRINGS),
]
# unbound answers any name under burst.example (redirect), sends UDP answers as long as the
# client's EDNS size allows (default max-udp-size 1232 would truncate the TXT answer) and
# gets a large receive buffer so that a burst forwarded at once is not dropped in its socket
UNBOUND_EXTRA = """\
    local-zone: "burst.example." redirect
    max-udp-size: 65536
    so-rcvbuf: 4m
"""


@pytest.fixture(scope="module")
def unbound(tmp_path_factory):
    ub = Unbound(tmp_path_factory.mktemp("ub"), LOCAL_DATA, extra=UNBOUND_EXTRA).start()
    yield ub
    ub.stop()


@pytest.fixture(scope="module", params=MODES)
def guard(request, tmp_path_factory, unbound):
    """A nocpolicyd on 127.0.0.1 and [::1] with the given ``--dns-io``; yields (daemon, v6 port)."""
    tmp = tmp_path_factory.mktemp(f"io-{request.param}")
    v6 = free_port(host="::1")
    pol = dns_policy(tmp, unbound.port)
    with open(pol / "dns.yaml", "a") as f:     # bursts from one source, answers past 4 KiB over UDP
        f.write("  ratelimit:\n    qps: 1000000\n    blocked_qps: 1000000\n  max_udp_size: 65535\n")
    d = DaemonProcess(tmp, policies=pol, extra_args=["--dns-io", request.param, "--dns-listen", f"[::1]:{v6}"])
    d.start()
    d.mode = request.param
    yield d, v6
    d.stop()


def ede_codes(r) -> list[int]:
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def ask(port, name, rdtype="A", host="127.0.0.1", tcp=False, edns=0, payload=1232, source=None):
    q = dns.message.make_query(name, rdtype, use_edns=edns, payload=payload)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, host, port=port, timeout=3, source=source)


def query_wire(qid: int, name: str, qtype: int = 1, edns: int | None = 1232) -> bytes:
    """A query by hand (flags RD), with an OPT record when ``edns`` is a size."""
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    head = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    opt = b"\x00" + struct.pack("!HHIH", 41, edns, 0, 0) if edns else b""
    return head + qname + struct.pack("!HH", qtype, 1) + opt


# -- the same behaviour in both modes ------------------------------------------------------

def test_blocked_name_nxdomain_with_ede(guard):
    d, _ = guard
    r = ask(d.dns_port, "csam.example")
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [16]
    r = ask(d.dns_port, "sub.www.bardubar.com")
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [15]


def test_forwarded_answer_keeps_id_and_letter_case(guard):
    d, _ = guard
    for qid in (0, 0x1234, 0xFFFF):
        wire = query_wire(qid, "mIxEdCaSe.ExAmPlE.oRg")
        raw = udp_exchange(d.dns_port, wire)
        assert raw[:2] == wire[:2]
        assert b"\x09mIxEdCaSe\x07ExAmPlE\x03oRg\x00" in raw
        r = dns.message.from_wire(raw)
        assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.81"]
    raw = udp_exchange(d.dns_port, query_wire(0xBEEF, "CSAM.Example"))
    assert raw[:2] == b"\xbe\xef" and b"\x04CSAM\x07Example\x00" in raw


def test_ipv6_listener(guard):
    d, v6 = guard
    r = ask(v6, "www.example.org", host="::1")
    assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.80"]
    r = ask(v6, "www.bardubar.com", host="::1")          # ::1 is customer c-v6: security lists apply
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [15]


def test_tcp_still_works(guard):
    d, v6 = guard
    r = ask(d.dns_port, "www.example.org", tcp=True)
    assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.80"]
    assert ede_codes(ask(v6, "csam.example", host="::1", tcp=True)) == [16]


def test_burst_every_query_answered_once(guard):
    """500 queries from 10 sockets written without waiting: each answered exactly once, in full."""
    d, _ = guard
    before = d.metric("nocpolicy_dns_queries_total", {"transport": "udp"}) or 0
    n_socks, per_sock = 10, 50
    rng = random.Random(7)
    ids = rng.sample(range(65536), n_socks * per_sock)
    sel = selectors.DefaultSelector()
    socks, expect = [], {}            # (socket index, ID) -> (name as sent, blocked?)
    try:
        for i in range(n_socks):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.connect(("127.0.0.1", d.dns_port))
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
        for k in range(per_sock):                           # interleaved over the sockets
            for i, s in enumerate(socks):
                qid = ids[i * per_sock + k]
                n = i * per_sock + k
                name = f"b{n}.CSAM.example" if n % 5 == 0 else f"Q{n}.Burst.example"
                expect[(i, qid)] = (name, n % 5 == 0)
                s.send(query_wire(qid, name))
        got: dict[tuple[int, int], list[bytes]] = {}
        deadline = time.monotonic() + 15
        while len(got) < len(expect) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                while True:
                    try:
                        raw = s.recv(65535)
                    except BlockingIOError:
                        break
                    got.setdefault((key.data, (raw[0] << 8) | raw[1]), []).append(raw)
        missing = set(expect) - set(got)
        assert not missing, f"{len(missing)} of {len(expect)} queries unanswered ({d.mode})"
        for key, _ in sel.select(timeout=0.3):      # anything more now would be a duplicate
            with contextlib.suppress(BlockingIOError):
                extra = key.fileobj.recv(65535)
                got.setdefault((key.data, (extra[0] << 8) | extra[1]), []).append(extra)
        assert set(got) == set(expect)
        for key, raws in got.items():
            assert len(raws) == 1, f"{key}: answered {len(raws)} times"
            name, blocked = expect[key]
            r = dns.message.from_wire(raws[0])
            assert r.question[0].name.to_text() == name + "."          # letter case kept
            if blocked:
                assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [16], name
            else:
                assert r.rcode() == dns.rcode.NOERROR, (name, r.to_text())
                assert [str(x) for x in r.answer[0]] == [BURST_IP]
    finally:
        for s in socks:
            s.close()
        sel.close()
    wait_for(lambda: d.metric("nocpolicy_dns_queries_total", {"transport": "udp"}) >= before + 500, 5,
             what="500 more UDP queries counted")
    assert d.metric("nocpolicy_dns_send_drops_total") == 0      # nothing refused on loopback


def test_oversized_and_garbage_datagrams(guard):
    d, _ = guard
    addr = ("127.0.0.1", d.dns_port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 18)
        s.settimeout(2)
        # over 4096 bytes is not a query (docs/dns.md): FORMERR, whether the datagram arrives
        # whole (asyncio) or cut to the 4160-byte receive slot (batched)
        for qid, size in ((0x4097, 4097), (0x4161, 4161), (0x5000, 5000), (0x6500, 65000)):
            q = query_wire(qid, "www.example.org")
            s.sendto(q + b"\x00" * (size - len(q)), addr)        # a query with trailing junk
            r = dns.message.from_wire(s.recv(65535), question_only=True)
            assert r.id == qid and r.rcode() == dns.rcode.FORMERR, (size, r)
        # dropped silently: too short for a header, and a response (never answer those: loops)
        response = bytearray(query_wire(0x7001, "www.example.org"))
        response[2] |= 0x80
        dropped = [b"\x00", b"\xff" * 11, bytes(response)]
        # answered FORMERR: no question, a compression loop in the question, random bytes
        rng = random.Random(3)
        formerr = {0x7002: struct.pack("!HHHHHH", 0x7002, 0x0100, 0, 0, 0, 0),
                   0x7003: b"\x70\x03\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
                   0x7004: b"\x70\x04\x01\x00\x00\x01" + bytes(rng.randrange(192, 256) for _ in range(300))}
        for g in dropped + list(formerr.values()):
            s.sendto(g, addr)
        good = query_wire(0x7005, "www.example.org")
        s.sendto(good, addr)
        # the answers of one read batch may leave in any order (the C loop sends what it answers
        # from its tables before what Python answered): collect until each expected one came
        got = {}
        while not set(formerr) | {0x7005} <= set(got):
            raw = s.recv(65535)
            got[(raw[0] << 8) | raw[1]] = raw
        for qid in formerr:
            assert dns.message.from_wire(got[qid], question_only=True).rcode() == dns.rcode.FORMERR
        r = dns.message.from_wire(got[0x7005])
        assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.80"]
        # whatever that batch sent has left before a later query is read: nothing for the
        # dropped datagrams may come before this answer
        s.sendto(query_wire(0x7006, "www.example.org"), addr)
        while (qid := ((raw := s.recv(65535))[0] << 8) | raw[1]) != 0x7006:
            got[qid] = raw
        assert sorted(got) == sorted(set(formerr) | {0x7005}), [hex(x) for x in got]
    assert ask(d.dns_port, "csam.example").rcode() == dns.rcode.NXDOMAIN
    assert d.metric("nocpolicy_dns_malformed_total") >= 7


def test_answer_longer_than_a_send_slot(guard):
    """A ~6.4 KB TXT answer (longer than the 4096-byte send slot) reaches a UDP client whole."""
    d, v6 = guard
    for port, host in ((d.dns_port, "127.0.0.1"), (v6, "::1")):
        q = dns.message.make_query("bigtxt.example.org", "TXT", use_edns=0, payload=65000)
        r = dns.query.udp(q, host, port=port, timeout=3)
        assert not r.flags & dns.flags.TC, "the answer came truncated"
        assert len(r.to_wire()) > 4096
        assert sorted(b"".join(x.strings).decode() for x in r.answer[0]) == TXT_STRINGS
    r = ask(d.dns_port, "bigtxt.example.org", "TXT", payload=1232)  # the client's size still rules
    assert r.flags & dns.flags.TC


def test_batched_mode_reads_and_writes_with_mmsg_calls(guard):
    """Under batched I/O the event loop thread reads with recvmmsg and writes with sendmmsg;
    asyncio's path makes one recvmsg/recvfrom per datagram: strace on the running daemon."""
    d, _ = guard
    if not Path("/usr/bin/strace").exists():
        pytest.skip("strace is not installed")
    out = d.workdir / f"strace-{time.monotonic_ns()}.txt"
    err = open(d.workdir / "strace.err", "wb")
    tr = subprocess.Popen(["strace", "-p", str(d.proc.pid), "-o", str(out), "-e",
                           "trace=%network"], stderr=err)
    try:
        wait_for(lambda: "attached" in (d.workdir / "strace.err").read_text(), 10, what="strace attached")
        for _ in range(3):
            assert ask(d.dns_port, "www.example.org").rcode() == dns.rcode.NOERROR
    finally:
        tr.send_signal(signal.SIGINT)
        tr.wait(10)
        err.close()
    calls = out.read_text()
    if d.mode in ("native", "batched"):
        assert "recvmmsg(" in calls and "sendmmsg(" in calls, calls[-2000:]
    else:
        assert "recvmmsg(" not in calls and "sendmmsg(" not in calls, calls[-2000:]
        assert "recvmsg(" in calls or "recvfrom(" in calls, calls[-2000:]   # uvloop or asyncio


# -- upstream failures under batched I/O ---------------------------------------------------

def _daemon(tmp: Path, upstreams: str, mode: str = "batched") -> DaemonProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(tmp, policies=dns_policy(tmp, None, upstreams=upstreams),
                         extra_args=["--dns-io", mode]).start()


def _dead_then_good(tmp_path, unbound, mode) -> DaemonProcess:
    dead = free_port()                        # nothing listens: ICMP port unreachable
    return _daemon(tmp_path, f"""\
    - id: dead
      address: 127.0.0.1:{dead}
      timeout: 1s
    - id: good
      address: 127.0.0.1:{unbound.port}
      timeout: 1s
""", mode)


@pytest.mark.parametrize("mode", MODES)
def test_dead_upstream_then_working_one(tmp_path, unbound, mode):
    d = _dead_then_good(tmp_path, unbound, mode)
    try:
        t = time.monotonic()
        r = ask(d.dns_port, "www.example.org")
        assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.80"]
        assert time.monotonic() - t < 0.8, "retried after the timeout, not on the ICMP error"
        assert d.metric("nocpolicy_dns_upstream_queries_total", {"upstream": "dead", "result": "error"}) >= 1
        assert d.metric("nocpolicy_dns_upstream_queries_total", {"upstream": "dead", "result": "retry"}) >= 1
        r = ask(d.dns_port, "n0.burst.example")                # the second failure: still retried
        assert [str(x) for x in r.answer[0]] == [BURST_IP]
        status = d.ctl_json("status")["components"]["dns"]["upstreams"]
        assert [u["id"] for u in status] == ["dead", "good"]
        assert status[0]["consecutive_failures"] == 2 and status[0]["last_error"]
    finally:
        d.stop()


@pytest.mark.parametrize("mode", MODES)
def test_query_that_takes_an_upstream_down_goes_to_the_next(tmp_path, unbound, mode):
    d = _dead_then_good(tmp_path, unbound, mode)
    try:
        for i in range(5):                    # the 3rd failure marks "dead" down (tried last)
            r = ask(d.dns_port, f"n{i}.burst.example")
            assert r.answer and [str(x) for x in r.answer[0]] == [BURST_IP], (i, r.to_text())
        status = d.ctl_json("status")["components"]["dns"]["upstreams"]
        assert not status[0]["up"] and status[1]["up"]
    finally:
        d.stop()


def test_only_dead_upstreams_servfail_with_ede(tmp_path):
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)      # receives, never answers
    blackhole.bind(("127.0.0.1", 0))
    try:
        d = _daemon(tmp_path, f"""\
    - id: refused
      address: 127.0.0.1:{free_port()}
      timeout: 300ms
    - id: silent
      address: 127.0.0.1:{blackhole.getsockname()[1]}
      timeout: 300ms
""")
        try:
            r = ask(d.dns_port, "www.example.org")
            assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) in ([22], [23])
            assert ede_codes(ask(d.dns_port, "csam.example")) == [16]         # blocks still work
            assert d.metric("nocpolicy_dns_upstream_queries_total",
                            {"upstream": "refused", "result": "error"}) >= 1
        finally:
            d.stop()
    finally:
        blackhole.close()


@pytest.mark.parametrize("mode", MODES)
def test_upstream_answers_again_after_a_restart(tmp_path, mode):
    """The only upstream is down for a moment (port unreachable), then back on the same port:
    answers must flow again without restarting nocpolicyd."""
    ub = Unbound(tmp_path, LOCAL_DATA, extra=UNBOUND_EXTRA).start()
    d = _daemon(tmp_path / "d", f"""\
    - id: only
      address: 127.0.0.1:{ub.port}
      timeout: 400ms
""", mode)
    ub2 = None
    try:
        assert ask(d.dns_port, "www.example.org").rcode() == dns.rcode.NOERROR
        ub.stop()
        r = ask(d.dns_port, "n1.burst.example")
        assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) == [23]
        ub2 = Unbound(tmp_path, LOCAL_DATA, port=ub.port, extra=UNBOUND_EXTRA).start()
        wait_for(lambda: ask(d.dns_port, "www.example.org").rcode() == dns.rcode.NOERROR, 3,
                 interval=0.01, what="an answer from the restarted upstream")
        for i in range(3):
            assert [str(x) for x in ask(d.dns_port, f"r{i}.burst.example").answer[0]] == [BURST_IP]
    finally:
        d.stop()
        if ub2 is not None:
            ub2.stop()


# -- the flag --------------------------------------------------------------------------------

def test_bogus_dns_io_refused_by_argparse(tmp_path):
    p = subprocess.run([str(BIN / "nocpolicyd"), "--state-dir", str(tmp_path / "s"), "--dns-io", "bogus"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert "--dns-io" in p.stderr and "invalid choice: 'bogus'" in p.stderr
    assert "batched" in p.stderr and "asyncio" in p.stderr
    assert not (tmp_path / "s").exists()       # refused before doing anything


# -- send drops: answers the kernel refuses ---------------------------------------------------

CLONE_NEWNET = 0x40000000


def in_netns(ns: str, fn):
    """Run ``fn()`` on a thread moved into network namespace ``ns`` (setns is per thread)."""
    box: dict = {}

    def run():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if "error" in box:
        raise box["error"]
    return box.get("value")


class NetnsDaemon(DaemonProcess):
    """A nocpolicyd inside a network namespace; its endpoints are reached from inside it."""

    def __init__(self, workdir, ns, **kw):
        super().__init__(workdir, **kw)
        self.ns = ns

    def args(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().args()]

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"nocpolicyd exited with {self.proc.returncode}:\n{self.log()}")
            return http_get(f"{self.metrics_url}/readyz", timeout=1)[0] == 200
        in_netns(self.ns, lambda: wait_for(ready, timeout, what="nocpolicyd /readyz"))

    def metrics(self) -> str:
        return in_netns(self.ns, lambda: http_get(f"{self.metrics_url}/metrics")[1])


@pytest.fixture
def netns():
    """A fresh network namespace with its loopback up (deleted afterwards)."""
    if need_root_netns() is not None:
        pytest.skip(need_root_netns())
    ns = f"nocpdns-{random.randrange(16**8):08x}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)


def nft_drop(ns: str, match: str) -> None:
    """An nftables rule in namespace ``ns`` dropping output packets that match ``match``."""
    rules = ("add table inet nocptest\n"
             "add chain inet nocptest out { type filter hook output priority 0; }\n"
             f"add rule inet nocptest out {match} drop\n")
    p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr


def drops_in_netns(d: DaemonProcess) -> float:
    return float(_sample(http_get(f"{d.metrics_url}/metrics")[1], "nocpolicy_dns_send_drops_total"))


@pytest.mark.netns
def test_send_drops_counted_when_the_kernel_refuses_answers(tmp_path, netns):
    """A firewall rule refuses the answers to one client: the batched listener's sendmmsg
    gets EPERM for them, counts them, and keeps answering the others."""
    d = NetnsDaemon(tmp_path, netns, policies=dns_policy(tmp_path, free_port()),
                    extra_args=["--dns-io", "batched"])
    d.start()
    try:
        nft_drop(netns, f"ip daddr 127.0.0.77 udp sport {d.dns_port}")

        def clients():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lost, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ok:
                lost.bind(("127.0.0.77", 0))
                ok.bind(("127.0.0.1", 0))
                ok.settimeout(3)
                for i in range(7):                  # their answers are refused by the kernel
                    lost.sendto(query_wire(0x100 + i, "csam.example"), ("127.0.0.1", d.dns_port))
                answered = []
                for i in range(3):                  # the listener goes on answering others
                    ok.sendto(query_wire(0x200 + i, "csam.example"), ("127.0.0.1", d.dns_port))
                    answered.append(ok.recv(512)[:2])
                wait_for(lambda: drops_in_netns(d) >= 7, 5, what="7 send drops counted")
                lost.setblocking(False)
                with pytest.raises(BlockingIOError):
                    lost.recv(512)
                return answered

        assert in_netns(netns, clients) == [bytes([2, i]) for i in range(3)]
        assert d.metric("nocpolicy_dns_send_drops_total") == 7
        assert d.metric("nocpolicy_dns_responses_total", {"rcode": "NXDOMAIN"}) == 10
    finally:
        d.stop()


@pytest.mark.netns
def test_upstream_send_drops_survive_a_reload_that_replaces_the_upstreams(tmp_path, netns):
    """Forwarded queries the kernel refuses are counted on the upstream's socket; the counter
    keeps them after a reload closes that socket (a counter never goes down)."""
    refused, other = free_port(), free_port()
    pol = dns_policy(tmp_path, refused)
    d = NetnsDaemon(tmp_path, netns, policies=pol, extra_args=["--dns-io", "batched", "--no-watch"])
    d.start()
    try:
        nft_drop(netns, f"ip daddr 127.0.0.1 udp dport {refused}")

        def forward(names):
            out = []
            for n in names:
                r = ask(d.dns_port, n)
                out.append((r.rcode(), ede_codes(r)))
            return out

        servfail = (dns.rcode.SERVFAIL, [23])
        assert in_netns(netns, lambda: forward(["a.example.org", "b.example.org", "c.example.org"])) \
            == [servfail] * 3                                  # refused at once: Network Error
        assert d.metric("nocpolicy_dns_send_drops_total") == 3  # scraped while the socket is open
        dns_yaml = pol / "dns.yaml"
        dns_yaml.write_text(dns_yaml.read_text().replace(f":{refused}", f":{other}"))
        reload = subprocess.run(["ip", "netns", "exec", netns, str(BIN / "nocpolicyctl"), "--admin", d.admin,
                                 "--state-dir", str(d.state_dir), "reload"],
                                capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload.stdout + reload.stderr

        def old_socket_closed():
            return not sh("ip", "netns", "exec", netns, "ss", "-Huan", "dst", f"127.0.0.1:{refused}").strip()
        wait_for(old_socket_closed, 10, what="the replaced upstream socket closed")
        assert d.metric("nocpolicy_dns_send_drops_total") == 3
        assert in_netns(netns, lambda: forward(["d.example.org"])) == [servfail]   # ICMP: no drop
        assert d.metric("nocpolicy_dns_send_drops_total") == 3
    finally:
        d.stop()


def _sample(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return line.split()[1]
    raise AssertionError(f"{name} not in the exposition")
