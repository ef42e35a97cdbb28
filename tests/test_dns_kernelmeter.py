"""The kernel backstop behind the per-source rate limit (dns/kernelmeter.py, issue 14):
real nftables in a namespace the test creates, real UDP datagrams, the counter read back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from conftest import need_root_netns
from helpers import netns_with_veths, sh
from nocpolicy.dns import kernelmeter
from nocpolicy.dns.kernelmeter import KernelMeter, Meter
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy

# Inside the namespace: a receiver on 127.0.0.1:PORT; SENDS datagrams as fast as possible from
# each source, then the count received per source (the receiver keeps reading until 1 s of
# silence). Prints {"got": {src: n}, "seconds": send time}.
FLOOD = r"""
import json, socket, sys, time
port, plan = int(sys.argv[1]), json.loads(sys.argv[2])
dst = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
rx = socket.socket(fam, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)          # SO_RCVBUFFORCE: nothing lost to the buffer
rx.bind((dst, port))
t0 = time.monotonic()
for src, n in plan.items():
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((src, 0))
    for i in range(n):
        s.sendto(b"q%d" % i, (dst, port))
    s.close()
sent = time.monotonic() - t0
got = {src: 0 for src in plan}
rx.settimeout(1.0)
while True:
    try:
        _, peer = rx.recvfrom(64)
        src = peer[0]
    except TimeoutError:
        break
    got[src] += 1
print(json.dumps({"got": got, "seconds": sent}))
"""

SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 0))
for i in range(int(sys.argv[3])):
    s.sendto(b"junk", ("127.0.0.1", int(sys.argv[1])))
"""


@pytest.fixture
def ns():
    why = need_root_netns()
    if why:
        pytest.skip(why)
    with netns_with_veths("h6km", []) as name:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name


def test_meter_drops_a_flooding_source_before_the_socket_and_counts_it(ns):
    port, qps = 5353, 200
    meter = KernelMeter({}, ("ip", "netns", "exec", ns, "nft"))
    asyncio.run(meter.set(Meter(qps, qps, (port,), exempt=("127.0.0.4/32",))))
    assert meter.meter is not None
    plan = {"127.0.0.2": 3000, "127.0.0.3": 50, "127.0.0.4": 3000}   # flooder, quiet client, exempt
    out = json.loads(sh("ip", "netns", "exec", ns, sys.executable, "-c", FLOOD, str(port), json.dumps(plan)))
    got, seconds = out["got"], out["seconds"]
    # the flooder gets its burst plus the rate for as long as it sent, give or take a second
    assert got["127.0.0.2"] <= qps + qps * (seconds + 1), out
    assert got["127.0.0.2"] < 3000, out
    assert got["127.0.0.3"] == 50, out           # a source under the rate loses nothing
    assert got["127.0.0.4"] == 3000, out         # exempt (public safety): never metered
    asyncio.run(meter.poll())
    assert meter.counters["kernel_dropped"] == 3000 - got["127.0.0.2"]
    # other ports are not metered
    other = json.loads(sh("ip", "netns", "exec", ns, sys.executable, "-c", FLOOD, "5354",
                          json.dumps({"127.0.0.2": 1000})))
    assert other["got"]["127.0.0.2"] == 1000, other


def test_ipv6_sources_share_the_meter_of_their_prefix(ns):
    same = [f"2001:db8:0:1::{i}" for i in range(2, 6)]          # four addresses of one /56
    for a in (*same, "2001:db8:1::2"):
        sh("ip", "-n", ns, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
    port, qps = 5353, 200
    meter = KernelMeter({}, ("ip", "netns", "exec", ns, "nft"))
    asyncio.run(meter.set(Meter(qps, qps, (port,), ipv6_prefix=56)))
    plan = {**{a: 750 for a in same}, "2001:db8:1::2": 50}
    out = json.loads(sh("ip", "netns", "exec", ns, sys.executable, "-c", FLOOD, str(port), json.dumps(plan), "::1"))
    got, seconds = out["got"], out["seconds"]
    flood = sum(got[a] for a in same)
    # one budget for the whole /56 (four budgets would let 4 x 200 through at once)
    assert flood <= qps + qps * (seconds + 1), out
    assert got["2001:db8:1::2"] == 50, out               # another /56 loses nothing
    asyncio.run(meter.poll())
    assert meter.counters["kernel_dropped"] == 4 * 750 - flood


def test_meter_is_replaced_whole_and_removed(ns):
    nft = ("ip", "netns", "exec", ns, "nft")
    meter = KernelMeter({}, nft)
    asyncio.run(meter.set(Meter(500, 500, (53, 5353), ipv4_prefix=24, ipv6_prefix=56)))
    listing = sh(*nft, "list", "table", "inet", kernelmeter.TABLE)
    assert "500/second" in listing and "ip saddr & 255.255.255.0" in listing
    assert "ip6 saddr & ffff:ffff:ffff:ff00::" in listing
    asyncio.run(meter.set(Meter(800, 1000, (53,))))
    listing = sh(*nft, "list", "table", "inet", kernelmeter.TABLE)
    assert "800/second burst 1000 packets" in listing and "500/second" not in listing
    asyncio.run(meter.set(None))
    assert meter.meter is None
    assert subprocess.run([*nft, "list", "table", "inet", kernelmeter.TABLE], capture_output=True).returncode != 0


def test_meter_that_cannot_be_applied_is_an_error_and_counted(ns):
    counters: dict = {}
    meter = KernelMeter(counters, ("ip", "netns", "exec", ns, "no-such-nft"))
    with pytest.raises(Exception, match="no-such-nft"):
        asyncio.run(meter.set(Meter(500, 500, (53,))))
    assert counters["kernel_errors"] == 1 and meter.meter is None


def test_policy_refuses_a_kernel_meter_under_the_user_space_limit(tmp_path):
    (tmp_path / "p.yaml").write_text("customers: []\ndns:\n  ratelimit:\n    qps: 1000\n    kernel_qps: 500\n")
    with pytest.raises(PolicyInvalid) as err:
        load_policy(str(tmp_path))
    assert "p.yaml:5" in str(err.value) and "kernel_qps" in str(err.value)
    (tmp_path / "p.yaml").write_text("customers: []\ndns:\n  ratelimit:\n    qps: 1000\n    kernel_qps: 5000\n")
    rl = load_policy(str(tmp_path)).dns.limits.ratelimit
    assert (rl.kernel_qps, rl.kernel_burst) == (5000, 0)


def test_daemon_applies_the_meter_counts_its_drops_and_removes_it_on_stop(ns, tmp_path):
    from helpers import wait_for
    from test_dns_batched_io import NetnsDaemon, in_netns
    from test_dns_hostile import policy

    pol = policy(tmp_path, 9, "  ratelimit:\n    qps: 100\n    kernel_qps: 300\n")
    d = NetnsDaemon(tmp_path, ns, policies=pol).start()
    nft = ("ip", "netns", "exec", ns, "nft")
    try:
        listing = sh(*nft, "list", "table", "inet", kernelmeter.TABLE)
        assert f"udp dport {d.dns_port} update @flood4" in listing and "300/second" in listing
        sh("ip", "netns", "exec", ns, sys.executable, "-c", SEND, str(d.dns_port), "127.0.0.2", "3000")

        def counted():
            for line in d.metrics().splitlines():
                if line.startswith("nocpolicy_dns_kernel_meter_dropped_total "):
                    return float(line.split()[1]) >= 1000
            return False
        in_netns(ns, lambda: wait_for(counted, 40, interval=1, what="the kernel drops in the metrics"))
    finally:
        d.stop()
    assert subprocess.run([*nft, "list", "table", "inet", kernelmeter.TABLE], capture_output=True).returncode != 0
