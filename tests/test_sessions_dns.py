"""Live sessions in the DNS guard's client lookup: a Start or Stop (real radclient) takes
effect for the very next query in every DNS worker; implicit customers get runtime opt-outs."""

from __future__ import annotations

import shutil

import dns.message
import dns.query
import dns.rcode
import pytest

from helpers import DaemonProcess, free_port
from sessions_fixtures import acct, radclient, sessions_policy

pytestmark = pytest.mark.skipif(not shutil.which("radclient"), reason="radclient not installed")

CLIENT = "127.77.0.5"          # a loopback address outside every static prefix: a session's


def refusing_policy(tmp_path, port):
    pol = sessions_policy(tmp_path, port)
    dns_yaml = pol / "dns.yaml"
    dns_yaml.write_text(dns_yaml.read_text().replace("unknown_clients: protect", "unknown_clients: refuse"))
    return pol


def ask(d: DaemonProcess, name: str, source: str = CLIENT, sport: int = 0) -> int:
    q = dns.message.make_query(name, "A")
    return dns.query.udp(q, "127.0.0.1", port=d.dns_port, source=source, source_port=sport, timeout=5).rcode()


def many_ports(d: DaemonProcess, name: str, n: int = 24) -> set[int]:
    """rcodes of ``n`` queries from as many source ports (SO_REUSEPORT spreads them over the workers)."""
    return {ask(d, name, sport=free_port(kind=2)) for _ in range(n)}


@pytest.mark.parametrize("workers", [1, 2])
def test_start_and_stop_take_effect_at_the_next_query_in_every_worker(tmp_path, workers):
    port = free_port(kind=2)
    d = DaemonProcess(tmp_path, policies=refusing_policy(tmp_path, port),
                      extra_args=["--workers", str(workers)]).start()
    try:
        assert many_ports(d, "mandatory-blocked.invalid") == {dns.rcode.REFUSED}     # unknown: refused
        start = acct("Start", "DNS1", user="c9999@isp.example", ip=CLIENT)
        assert "Received Accounting-Response" in radclient(port, start).stdout
        # judged as customer c9999 (implicit) in every worker, from the very next query
        assert many_ports(d, "mandatory-blocked.invalid") == {dns.rcode.NXDOMAIN}
        out = d.ctl_json("explain", "--client", CLIENT, "--name", "mandatory-blocked.invalid")
        assert "c9999" in str(out)
        stop = acct("Stop", "DNS1", user="c9999@isp.example", ip=CLIENT, Acct_Session_Time=10)
        assert "Received Accounting-Response" in radclient(port, stop).stdout
        assert many_ports(d, "mandatory-blocked.invalid") == {dns.rcode.REFUSED}
    finally:
        d.stop()


def test_implicit_customer_opt_out_and_static_prefix_wins(tmp_path):
    port = free_port(kind=2)
    d = DaemonProcess(tmp_path, policies=sessions_policy(tmp_path, port)).start()
    try:
        assert "Received Accounting-Response" in radclient(port, acct("Start", "O1", user="c9998@isp.example",
                                                                      ip=CLIENT)).stdout
        cc = "dvr.petcp.com"          # in the example C&C (security) list
        before = d.ctl_json("explain", "--client", CLIENT, "--name", cc)
        res = d.ctl("optout", "on", "c9998", "--reason", "asked by phone")
        assert res.returncode == 0, res.stderr
        after = d.ctl_json("explain", "--client", CLIENT, "--name", cc)
        assert "c9998" in str(after) and before != after
        # a session address inside customer c1001's static prefix: the static prefix wins
        assert "Received Accounting-Response" in radclient(port, acct("Start", "X1", user="c7777@isp.example",
                                                                      ip="192.0.2.10")).stdout
        assert "c1001" in str(d.ctl_json("explain", "--client", "192.0.2.10", "--name", cc))
        assert d.metric("nocpolicy_sessions_conflicts_total") == 1
        assert "lies inside a static prefix of customer c1001" in d.log()
    finally:
        d.stop()
