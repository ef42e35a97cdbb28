"""A muted source (past its rate limit and its share of slipped answers) is dropped by a socket
filter in the kernel, so its datagrams never queue in front of other customers' queries; every
one of them is still counted, and each new one-second window gives the source its quota back
(issue 14). A source still flooding when the window ends stays sampled in the next one: only
about twice its allowance reaches the socket, not the whole flood at once."""

from __future__ import annotations

import select
import socket

import dns.message
import dns.rcode
import pytest

from helpers import DaemonProcess, wait_for
from nocpolicy.dns.mutefilter import MAX_ADDRESSES, MuteFilter
from nocpolicy.dns.ratelimit import SLIP_MIN, RateLimiter
from nocpolicy.dns.stats import DnsStats
from nocpolicy.policy.dnsguard import RateLimit
from test_dns_flood import query
from test_dns_hostile import one, policy


def _listener(family: int, host: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def _client(family: int, host: str) -> socket.socket:
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.bind((host, 0))
    return c


def _queued(s: socket.socket, want: int, quiet: float = 0.5) -> list[bytes]:
    """What the socket holds: read until ``want`` datagrams or ``quiet`` s of silence (bounded)."""
    out: list[bytes] = []
    while len(out) < want and select.select([s], [], [], quiet)[0]:
        out.append(s.recv(512))
    return out


@pytest.mark.parametrize("family,lo,flooder,other", [
    (socket.AF_INET, "127.0.0.1", "127.0.0.2", "127.0.0.3"),
    (socket.AF_INET6, "::1", "::1", None),
])
def test_muted_source_is_dropped_before_the_socket_and_counted(family, lo, flooder, other):
    try:
        srv = _listener(family, lo)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = srv.getsockname()[1]
    f = MuteFilter()
    f.add_socket(srv)
    a = _client(family, flooder)
    b = _client(family, other) if other else None
    try:
        f.mute(flooder)
        for i in range(200):
            a.sendto(b"flood %d" % i, (lo, port))
            if b is not None:
                b.sendto(b"other %d" % i, (lo, port))
        got = _queued(srv, 400 if b is not None else 1)
        assert not any(g.startswith(b"flood") for g in got)          # none of the muted source's
        assert len(got) == (200 if b is not None else 0)              # all of the other's
        assert f.clear() == 200                                       # each one counted
        a.sendto(b"after the window", (lo, port))                     # its quota is back
        assert _queued(srv, 1, quiet=5) == [b"after the window"]
        assert f.clear() == 0                                         # nothing filtered any more
    finally:
        for s in (srv, a, b):
            if s is not None:
                s.close()


def test_filter_holds_a_bounded_number_of_sources():
    srv = _listener(socket.AF_INET, "127.0.0.1")
    f = MuteFilter()
    f.add_socket(srv)
    try:
        for i in range(MAX_ADDRESSES + 10):
            f.mute(f"10.9.{i // 250}.{i % 250 + 1}")
        assert len(f.socks[0].entries) == MAX_ADDRESSES and not f.failed
        f.mute("not an address")                                      # ignored, not an error
        assert not f.failed
    finally:
        srv.close()


def test_rate_limiter_mutes_in_the_kernel_and_counts_at_the_window():
    stats = DnsStats()
    lim = RateLimiter(stats, RateLimit(qps=20, slip=2))
    srv = _listener(socket.AF_INET, "127.0.0.1")
    lim.mute_filter.add_socket(srv)
    c = _client(socket.AF_INET, "127.0.0.2")
    try:
        data = query(1)
        for n in range(21, 21 + 2 * SLIP_MIN + 1):                    # past the slip cap: muted
            lim.over("127.0.0.2", n, 20, "queries", data, None, lambda b, a: None)
        assert "127.0.0.2" in lim.muted
        for _ in range(300):
            c.sendto(data, ("127.0.0.1", srv.getsockname()[1]))
        assert _queued(srv, 1) == []
        lim.tick()
        assert stats.limits["socket_filtered"] == 300
        assert stats.limits["queries_dropped"] == (2 * SLIP_MIN + 1 - SLIP_MIN) + 300
        # the next window: it was sending far past its allowance, so the filter samples it
        p = lim.sampled["127.0.0.2"]
        assert 0 < p < 1
        for _ in range(1000):
            c.sendto(data, ("127.0.0.1", srv.getsockname()[1]))
        got = len(_queued(srv, 1000))
        assert p * 1000 / 3 < got < p * 1000 * 3, (p, got)            # ~p of them, drawn at random
        lim.tick()                                                    # not muted again: read in full
        assert not lim.sampled and stats.limits["socket_filtered"] == 300 + 1000 - got
        c.sendto(data, ("127.0.0.1", srv.getsockname()[1]))
        assert len(_queued(srv, 1, quiet=5)) == 1
    finally:
        srv.close()
        c.close()


def test_flooder_filtered_in_the_daemon_while_others_are_answered(tmp_path):
    pol = policy(tmp_path, 9, "  ratelimit:\n    qps: 20\n    blocked_qps: 0\n    slip: 2\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    s = _client(socket.AF_INET, "127.0.0.5")
    try:
        def filtered() -> float:
            return d.metric("nocpolicy_dns_ratelimit_socket_filtered_total")

        # bursts until the kernel has dropped some (bounded: 20 bursts of 2000)
        for burst in range(20):
            for i in range(2000):
                s.sendto(query(burst * 2000 + i), ("127.0.0.1", d.dns_port))
            try:
                wait_for(lambda: filtered() > 0, 3, what="socket filter drops")
                break
            except TimeoutError:
                continue
        assert filtered() > 0
        r = one("127.0.0.6", d.dns_port, "www.bardubar.com")           # another source: a real answer
        assert r.rcode() == dns.rcode.NXDOMAIN
        # the filtered datagrams are part of the dropped count
        assert d.metric("nocpolicy_dns_ratelimited_total", {"limit": "queries", "action": "dropped"}) >= filtered()
    finally:
        s.close()
        d.stop()
