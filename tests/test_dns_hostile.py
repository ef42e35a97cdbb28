"""Hostile traffic at the DNS guard, on real sockets against a real nocpolicyd.

Per-source rate limits with slip, the blocked-answer limit, exemptions, the pending-upstream
quota, TCP limits, EDNS clamping, RFC 8482 ANY, the access list, the detection log's bounds
and the pseudonym key's rotation.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import BIN, DaemonProcess, free_port, netns_with_veths, wait_for
from nocpolicy.dns.detections import DetectionLog, pseudonym
from nocpolicy.dns.pseudonym import PseudonymKeys
from nocpolicy.dns.verdict import Verdict
from nocpolicy.store import Store

EXEMPT_CUSTOMER = """\
  - id: c-safety
    name: Fire brigade
    prefixes: [127.0.0.7/32]
    plan: home
    public_safety: true
"""


def policy(tmp, upstream_port, dns_extra: str = "", upstreams: str | None = None):
    pol = dns_policy(tmp, upstream_port, upstreams=upstreams)
    with open(pol / "customers.yaml", "a") as f:
        f.write(EXEMPT_CUSTOMER)
    with open(pol / "dns.yaml", "a") as f:
        f.write(dns_extra)
    return pol


def burst(src: str, port: int, names: list[str], *, qtype: str = "A", wait: float = 2.0) -> list:
    """Send one query per name from ``src`` as fast as possible; the answers that come back
    within ``wait`` s of silence (bounded: at most len(names) answers)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        for i, n in enumerate(names):
            q = dns.message.make_query(n, qtype)
            q.id = i
            s.sendto(q.to_wire(), ("127.0.0.1", port))
        out = []
        while len(out) < len(names) and select.select([s], [], [], wait)[0]:
            out.append(dns.message.from_wire(s.recv(65535)))
        return out
    finally:
        s.close()


def one(src: str, port: int, name: str, qtype: str = "A", **kw) -> dns.message.Message:
    q = dns.message.make_query(name, qtype, **kw)
    return dns.query.udp(q, "127.0.0.1", port=port, source=src, timeout=5)


def tc(msgs) -> int:
    return sum(1 for m in msgs if m.flags & dns.flags.TC)


# -- per-source limits ---------------------------------------------------------------------

def test_rate_limit_slips_tc_and_spares_other_clients(tmp_path):
    pol = policy(tmp_path, 9, "  ratelimit:\n    qps: 20\n    blocked_qps: 0\n    slip: 2\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        names = [f"x{i}.bardubar.com" for i in range(300)]      # blocked: answered locally
        got = burst("127.0.0.5", d.dns_port, names)
        full = len(got) - tc(got)
        # one burst spans at most a few one-second windows of 20 queries each
        assert 20 <= full <= 80, full
        assert tc(got) >= 50                                    # every 2nd limited query: TC=1
        assert len(got) < 300                                   # the rest was dropped
        # another source is not affected, and its answer is a real one
        r = one("127.0.0.6", d.dns_port, "www.bardubar.com")
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.TC
        # a public-safety customer is exempt
        got = burst("127.0.0.7", d.dns_port, names[:150])
        assert len(got) == 150 and tc(got) == 0
        assert d.metric("nocpolicy_dns_ratelimited_total", {"limit": "queries", "action": "truncated"}) >= 50
        assert d.metric("nocpolicy_dns_ratelimited_total", {"limit": "queries", "action": "dropped"}) >= 50
        assert d.metric("nocpolicy_dns_ratelimit_exempt_total") >= 1
    finally:
        d.stop()


def test_blocked_answers_have_their_own_limit(tmp_path):
    ub = Unbound(tmp_path, [f"ok{i}.example.org. 300 IN A 192.0.2.{i % 250}" for i in range(120)]).start()
    pol = policy(tmp_path, ub.port, "  ratelimit:\n    qps: 100000\n    blocked_qps: 10\n    slip: 0\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        got = burst("127.0.0.5", d.dns_port, [f"c{i}.bardubar.com" for i in range(200)])
        assert 10 <= len(got) <= 40 and tc(got) == 0             # slip 0: the rest dropped
        allowed = burst("127.0.0.5", d.dns_port, [f"ok{i}.example.org" for i in range(120)], wait=3)
        assert len(allowed) == 120                               # forwarded answers are not limited
        assert d.metric("nocpolicy_dns_ratelimited_total", {"limit": "blocked", "action": "dropped"}) >= 160
    finally:
        d.stop()
        ub.stop()


def test_one_client_cannot_fill_the_pending_table(tmp_path):
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)        # an upstream that answers only when told
    up.bind(("127.0.0.1", 0))
    ups = f"    - id: slow\n      address: 127.0.0.1:{up.getsockname()[1]}\n      timeout: 20s\n"
    pol = policy(tmp_path, None, "  ratelimit:\n    max_pending: 10\n", upstreams=ups)
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.5", 0))
        for i in range(50):
            a.sendto(dns.message.make_query(f"n{i}.example.org", "A").to_wire(), ("127.0.0.1", d.dns_port))
        wait_for(lambda: (d.metric("nocpolicy_dns_pending_quota_drops_total") or 0) >= 40, 10,
                 what="40 queries over the quota")
        seen = []
        up.settimeout(0.5)
        while True:
            try:
                seen.append(up.recvfrom(4096))
            except TimeoutError:
                break
        assert len(seen) == 10                                    # only the quota reached the upstream
        q = dns.message.make_query("other.example.org", "A")
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b.bind(("127.0.0.6", 0))
        b.sendto(q.to_wire(), ("127.0.0.1", d.dns_port))
        up.settimeout(10)
        data, addr = up.recvfrom(4096)                            # another client still gets through
        fwd = dns.message.from_wire(data)
        assert str(fwd.question[0].name) == "other.example.org."
        resp = dns.message.make_response(fwd)
        up.sendto(resp.to_wire(), addr)
        b.settimeout(10)
        assert dns.message.from_wire(b.recv(4096)).id == q.id
        a.close()
        b.close()
    finally:
        d.stop()
        up.close()


# -- TCP and EDNS --------------------------------------------------------------------------

def test_tcp_per_ip_cap_idle_and_backpressure(tmp_path):
    pol = policy(tmp_path, 9, "  tcp:\n    per_ip: 3\n    idle: 2s\n    in_flight: 4\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        conns = [socket.create_connection(("127.0.0.1", d.dns_port), source_address=("127.0.0.5", 0))
                 for _ in range(5)]
        closed = []
        for c in conns:
            c.settimeout(5)
            try:
                closed.append(c.recv(1) == b"")
            except (ConnectionResetError, TimeoutError):
                closed.append(False)
        assert closed.count(True) >= 2            # over the per-IP cap: closed at once (2 s idle for others)
        assert d.metric("nocpolicy_dns_tcp_refused_total", {"reason": "per_ip"}) >= 2
        for c in conns:
            c.close()
        # one byte at a time does not keep a connection open
        slow = socket.create_connection(("127.0.0.1", d.dns_port), source_address=("127.0.0.6", 0))
        t0 = time.monotonic()
        slow.settimeout(0.5)
        frame = dns.message.make_query("www.bardubar.com", "A").to_wire()
        frame = len(frame).to_bytes(2, "big") + frame
        gone = False
        for i in range(40):                      # at most 20 s
            try:
                slow.send(frame[i % (len(frame) - 1):i % (len(frame) - 1) + 1] if i < len(frame) - 1 else b"\0")
                if slow.recv(1) == b"":
                    gone = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                gone = True
                break
        assert gone and time.monotonic() - t0 < 15
        slow.close()
    finally:
        d.stop()


def test_tcp_client_that_never_reads_is_not_buffered_without_limit(tmp_path):
    pol = policy(tmp_path, 9)
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        frame = dns.message.make_query("www.bardubar.com", "A").to_wire()
        frame = len(frame).to_bytes(2, "big") + frame
        hog = socket.create_connection(("127.0.0.1", d.dns_port), source_address=("127.0.0.8", 0))
        hog.setblocking(False)
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 8 and sent < 50_000_000:       # bounded in time and bytes
            try:
                sent += hog.send(frame * 200)
            except BlockingIOError:
                time.sleep(0.05)
        assert sent < 50_000_000                                     # the server stopped taking them
        assert d.metric("nocpolicy_dns_tcp_read_paused_total", {"reason": "write_buffer"}) >= 1
        r = one("127.0.0.6", d.dns_port, "www.bardubar.com")          # others are still answered
        assert r.rcode() == dns.rcode.NXDOMAIN
        hog.close()
    finally:
        d.stop()


def test_edns_size_clamped_and_any_minimal(tmp_path):
    big = [f"big.example.org. 300 IN A 10.0.{i // 250}.{i % 250}" for i in range(120)]   # ~1.9 KB
    ub = Unbound(tmp_path, [*big, "any.example.org. 300 IN A 192.0.2.1",
                            "any.example.org. 300 IN AAAA 2001:db8::1"]).start()
    pol = policy(tmp_path, ub.port)
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        r = one("127.0.0.5", d.dns_port, "big.example.org", "A", use_edns=0, payload=65000)
        assert r.flags & dns.flags.TC                          # 1.8 KB > 1232: truncated, retry over TCP
        r = dns.query.tcp(dns.message.make_query("big.example.org", "A", use_edns=0, payload=65000),
                          "127.0.0.1", port=d.dns_port, timeout=5)
        assert not r.flags & dns.flags.TC and r.answer
        r = one("127.0.0.5", d.dns_port, "any.example.org", "ANY", use_edns=0)
        assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.HINFO]
        assert r.answer[0][0].cpu == b"RFC8482"
        r = one("127.0.0.5", d.dns_port, "x.bardubar.com", "ANY")   # a listed name is still blocked
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert d.metric("nocpolicy_dns_any_answered_total") == 1
    finally:
        d.stop()
        ub.stop()


# -- who may query -------------------------------------------------------------------------

CLIENT = r"""
import json, sys, time, dns.message, dns.query, dns.edns
port = int(sys.argv[1])
def ask(src, name):
    for _ in range(100):
        try:
            return dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "198.51.100.1", port=port,
                                 source=src, timeout=0.3)
        except Exception:
            time.sleep(0.1)
    raise SystemExit("no answer")
out = {}
for src in ("198.51.100.77", "198.51.100.9", "127.0.0.1"):
    r = ask(src, "www.bardubar.com")
    ede = [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]
    out[src] = [r.rcode(), ede]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace")
def test_access_list_refuses_outsiders(tmp_path):
    import json
    pol = policy(tmp_path, 9, "  access_control:\n    allow: [198.51.100.8/29]\n")
    state = tmp_path / "state"
    port = free_port()
    with netns_with_veths("i14acl", []) as ns:
        ex = ["ip", "netns", "exec", ns]
        subprocess.run([*ex, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*ex, "ip", "addr", "add", "198.51.100.1/24", "dev", "lo"], check=True)
        log = open(tmp_path / "d.log", "wb")
        proc = subprocess.Popen([*ex, str(BIN / "nocpolicyd"), "--policies", str(pol), "--state-dir", str(state),
                                 "--dns-listen", f"198.51.100.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            res = subprocess.run([*ex, sys.executable, "-c", CLIENT, str(port)], capture_output=True,
                                 text=True, timeout=60)
            assert res.returncode == 0, res.stderr + (tmp_path / "d.log").read_text()
            out = json.loads(res.stdout)
        finally:
            proc.terminate()
            proc.wait(10)
    assert out["198.51.100.77"] == [dns.rcode.REFUSED, [18]]            # outside: REFUSED, Prohibited
    assert out["198.51.100.9"] == [dns.rcode.NXDOMAIN, [15]]            # an allowed pool: protected
    assert out["127.0.0.1"] == [dns.rcode.NXDOMAIN, [15]]               # loopback (a customer here)


# -- detection log -------------------------------------------------------------------------

def test_dga_flood_makes_one_row_per_entry(tmp_path):
    pol = policy(tmp_path, 9, "  ratelimit:\n    qps: 0\n    blocked_qps: 0\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        got = burst("127.0.0.5", d.dns_port, [f"r{i:05d}q.bardubar.com" for i in range(3000)], wait=3)
        assert len(got) >= 2500              # UDP on a busy machine may lose a few; none limited
        rows = wait_for(lambda: d.ctl_json("detections", "--limit", "100")["detections"], 10, what="rows")
        wait_for(lambda: len(got) <= sum(r["count"] for r in d.ctl_json("detections")["detections"]) <= 3000,
                 10, what="every answered block counted")
        rows = d.ctl_json("detections", "--limit", "100")["detections"]
        assert len(rows) == 1 and rows[0]["entry"] == "bardubar.com"
        assert 1 <= len(rows[0]["samples"]) <= 3 and all(s.endswith(".bardubar.com") for s in rows[0]["samples"])
    finally:
        d.stop()


def test_detection_caps_and_store_cap(tmp_path):
    from nocpolicy.policy.dnsguard import DetectionLogConf
    store = Store(tmp_path / "db.sqlite")
    counters: dict = {}
    now = [1_700_000_000.0]
    log = DetectionLog(store, b"k" * 32, now=lambda: now[0], counters=counters,
                       conf=DetectionLogConf(per_client=5, per_interval=8, store_max=1 << 20))
    for i in range(20):
        log.note(Verdict("nxdomain", "c1", "cc", "security", f"e{i}.example", f"w.e{i}.example"), "192.0.2.1")
    for i in range(20):
        log.note(Verdict("nxdomain", "c2", "cc", "security", f"e{i}.example", f"w.e{i}.example"), "192.0.2.2")
    assert log.write(log.take()) == 8
    assert counters.get("detections_client_cap", 0) + counters.get("detections_interval_cap", 0) == 32
    # past the store cap the oldest rows go, and every row deleted is counted
    big = "x" * 200
    for _ in range(2000):
        now[0] += 3600
        log.note(Verdict("nxdomain", "c1", "cc", "security", f"{big}.example", f"{big}.example"), "192.0.2.1")
        log.write(log.take())
    log.enforce_store_max()
    assert log.store_used() <= 1 << 20
    assert counters["detection_rows_evicted"] > 0
    ids = [r["id"] for r in store.all("SELECT id FROM dns_detections ORDER BY id")]
    assert ids[-1] == max(ids) and ids[0] > 8                      # the oldest went first
    store.close()


def test_pseudonym_key_rotates_and_is_never_zero(tmp_path):
    now = [1_700_000_000.0]
    keys = PseudonymKeys(tmp_path / "pseudonym.key", period=3600, now=lambda: now[0])
    k1 = keys.current()
    assert k1 != b"\0" * 32 and len(k1) == 32
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o777 == 0o600
    now[0] += 1800
    assert keys.current() == k1
    now[0] += 1801
    k2 = keys.current()
    assert k2 != k1 and (tmp_path / "pseudonym.key").read_bytes() == k2     # the old key is gone
    follower = PseudonymKeys(tmp_path / "pseudonym.key", period=3600, rotate=False, now=lambda: now[0])
    assert follower.current() == k2
    assert PseudonymKeys(None).current() not in (b"\0" * 32, PseudonymKeys(None).current())
    store = Store(tmp_path / "db.sqlite")
    log = DetectionLog(store, keys, now=lambda: now[0])
    v = Verdict("nxdomain", "c1", "cc", "security", "evil.example", "evil.example")
    log.note(v, "192.0.2.7")
    log.write(log.take())
    now[0] += 3601
    log.note(v, "192.0.2.7")
    log.write(log.take())
    clients = [r["client"] for r in log.query(since=None, customer=None, limit=10)]
    assert clients == [pseudonym(keys.current(), "192.0.2.7"), pseudonym(k2, "192.0.2.7")]
    store.close()


def test_policy_refuses_key_rotation_beyond_retention(tmp_path):
    pol = policy(tmp_path, 9, "  detection_log:\n    key_rotation: 60d\n")
    res = subprocess.run([str(BIN / "nocpolicyctl"), "check", str(pol)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0 and "key_rotation" in res.stdout + res.stderr and "dns.yaml" in res.stdout + res.stderr
