"""A flooding source costs the guard as little as possible (issue 14): past its limit and its
bounded share of slipped (TC) answers, its datagrams are dropped as they are read, and every
one of them is still counted; other sources keep their answers."""

from __future__ import annotations

import select
import socket

import dns.flags
import dns.message
import dns.rcode

from helpers import DaemonProcess, wait_for
from nocpolicy.dns.ratelimit import SLIP_MIN, RateLimiter
from nocpolicy.dns.stats import DnsStats
from nocpolicy.policy.dnsguard import RateLimit
from test_dns_hostile import one, policy


def query(i: int) -> bytes:
    q = dns.message.make_query(f"x{i}.bardubar.com", "A")
    q.id = i & 0xFFFF
    return q.to_wire()


def test_slips_are_bounded_and_a_source_past_them_is_muted():
    stats = DnsStats()
    lim = RateLimiter(stats, RateLimit(qps=20, slip=2))
    sent: list = []
    data = query(1)
    handled = [lim.over("192.0.2.1", n, 20, "queries", data, None, lambda b, a: sent.append(b))
               for n in range(21, 21 + 1000)]
    assert all(handled)
    assert len(sent) == SLIP_MIN                          # every 2nd limited one, up to the cap
    assert all(dns.message.from_wire(b).flags & dns.flags.TC for b in sent)
    assert "192.0.2.1" in lim.muted
    lim.muted["192.0.2.1"] += 500                          # what the listener drops unread
    lim.tick()
    assert not lim.muted
    assert stats.limits["queries_dropped"] == 1000 - SLIP_MIN + 500
    assert stats.limits["queries_slipped"] == SLIP_MIN
    # the blocked-answer limit never mutes: the source's allowed queries are still answered
    lim.over("192.0.2.2", 10_000, 20, "blocked", data, None, lambda b, a: None)
    assert "192.0.2.2" not in lim.muted


def test_flooder_is_dropped_unread_and_counted_while_others_are_answered(tmp_path):
    pol = policy(tmp_path, 9, "  ratelimit:\n    qps: 20\n    blocked_qps: 0\n    slip: 2\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.5", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        n = 3000
        for i in range(n):
            s.sendto(query(i), ("127.0.0.1", d.dns_port))
        got = []
        while len(got) < n and select.select([s], [], [], 2.0)[0]:
            got.append(dns.message.from_wire(s.recv(65535)))
        tc = sum(1 for m in got if m.flags & dns.flags.TC)
        full = len(got) - tc
        # a burst spans a few one-second windows: per window at most 20 answers + SLIP_MIN TC
        windows = max(1, full // 20 + (1 if full % 20 else 0))
        assert 20 <= full and tc <= windows * SLIP_MIN and len(got) < n / 2, (full, tc)
        r = one("127.0.0.6", d.dns_port, "www.bardubar.com")     # another source: a real answer
        assert r.rcode() == dns.rcode.NXDOMAIN and not r.flags & dns.flags.TC
        # every datagram the guard read is counted: answered, slipped or dropped (muted or not)

        def counted() -> float:
            return (d.metric("nocpolicy_dns_ratelimited_total", {"limit": "queries", "action": "dropped"})
                    + d.metric("nocpolicy_dns_ratelimited_total", {"limit": "queries", "action": "truncated"}))

        wait_for(lambda: counted() + full >= n * 0.9, 15, what="flood datagrams counted")
        assert counted() + full <= n
    finally:
        s.close()
        d.stop()
