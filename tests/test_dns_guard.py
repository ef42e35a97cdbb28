"""The DNS guard end to end: a real nocpolicyd, a real unbound upstream, dnspython and dig clients."""

from __future__ import annotations

import shutil
import socket
import subprocess

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, free_port, udp_exchange, wait_for

LOCAL_DATA = [
    "www.example.org. 300 IN A 192.0.2.80",
    "MixedCase.example.org. 300 IN A 192.0.2.81",
    "alias.example.org. 300 IN CNAME www.bardubar.com.",
    "alias-ok.example.org. 300 IN CNAME www.example.org.",
    "allowed.bardubar.com. 300 IN A 192.0.2.82",
    "optout-target.example.org. 300 IN A 192.0.2.83",
] + [f"big.example.org. 300 IN A 10.0.{i // 250}.{i % 250}" for i in range(60)]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnsguard")
    ub = Unbound(tmp, LOCAL_DATA).start()
    pol = dns_policy(tmp, ub.port)
    d = DaemonProcess(tmp, policies=pol, extra_args=["--dns-listen", f"[::1]:{free_port(host='::1')}"])
    d.start()
    yield d, ub
    d.stop()
    ub.stop()


def ask(d, name, rdtype="A", source="127.0.0.1", tcp=False, edns=0, port=None, host="127.0.0.1"):
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    fn = dns.query.tcp if tcp else dns.query.udp
    return fn(q, host, port=port or d.dns_port, timeout=3, source=source)


def ede_codes(r) -> list[int]:
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def test_three_classes_and_their_ede(env):
    d, _ = env
    r = ask(d, "csam.example")                                   # mandatory
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [16]
    r = ask(d, "sub.www.bardubar.com")                            # security (Maltrail, subdomain)
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [15]
    r = ask(d, "ads.tracker.example")                             # optional: c-home did not opt in
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == []  # unbound: static zone NXDOMAIN
    r = ask(d, "ads.tracker.example", source="127.0.0.3")        # opted in: sinkhole, EDE 4
    assert r.rcode() == dns.rcode.NOERROR and ede_codes(r) == [4]
    assert [str(x) for x in r.answer[0]] == ["0.0.0.0"]
    r = ask(d, "ads.tracker.example", "MX", source="127.0.0.3")  # no forged record: class EDE
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and ede_codes(r) == [17]


def test_forwarded_answer_preserves_id_case_and_edns(env):
    d, _ = env
    q = dns.message.make_query("mIxEdCaSe.ExAmPlE.oRg", "A", use_edns=0)
    wire = q.to_wire()
    raw = udp_exchange(d.dns_port, wire)
    assert raw[:2] == wire[:2]
    assert b"\x09mIxEdCaSe\x07ExAmPlE\x03oRg\x00" in raw
    r = dns.message.from_wire(raw)
    assert r.rcode() == dns.rcode.NOERROR and r.edns == 0
    assert [str(x) for x in r.answer[0]] == ["192.0.2.81"]
    r = ask(d, "www.example.org", edns=-1)                       # no EDNS in, none out
    assert r.edns == -1 and [str(x) for x in r.answer[0]] == ["192.0.2.80"]


def test_blocked_answer_without_edns_has_no_opt(env):
    d, _ = env
    r = ask(d, "csam.example", edns=-1)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.edns == -1


def test_policy_optout_keeps_mandatory(env):
    d, _ = env
    r = ask(d, "www.bardubar.com", source="127.0.0.2")           # opted out in the policy
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == []  # forwarded: unbound's NXDOMAIN
    r = ask(d, "csam.example", source="127.0.0.2")
    assert ede_codes(r) == [16]


def test_allow_exception_and_unknown_client(env):
    d, _ = env
    r = ask(d, "allowed.bardubar.com")
    assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.82"]
    r = ask(d, "www.bardubar.com", source="127.0.0.9")            # unknown client: protect
    assert ede_codes(r) == [15]


def test_rpz_semantics(env):
    d, _ = env
    assert ede_codes(ask(d, "rpz-exact.example")) == [15]
    assert ede_codes(ask(d, "a.rpz-exact.example")) == []          # exact only
    assert ede_codes(ask(d, "rpz-wild.example")) == []             # *.x does not cover x
    assert ede_codes(ask(d, "a.b.rpz-wild.example")) == [15]
    assert ede_codes(ask(d, "x.pass.rpz-wild.example")) == []      # rpz-passthru
    r = ask(d, "nodata.example")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and ede_codes(r) == [15]
    r = ask(d, "sink.example")
    assert [str(x) for x in r.answer[0]] == ["10.9.9.9"] and ede_codes(r) == [4]


def test_cname_chain_to_listed_name_is_blocked(env):
    d, _ = env
    r = ask(d, "alias.example.org")
    assert r.rcode() == dns.rcode.NXDOMAIN and ede_codes(r) == [15]
    r = ask(d, "alias-ok.example.org")
    assert r.rcode() == dns.rcode.NOERROR and r.answer
    v = d.ctl_json("explain", "--client", "127.0.0.1", "--name", "www.bardubar.com")
    assert v["verdict"]["list"] == "cc"


def test_truncated_answer_falls_back_to_tcp(env):
    d, _ = env
    r = ask(d, "big.example.org", edns=-1)                        # UDP, 512 bytes: TC passes through
    assert r.flags & dns.flags.TC
    r = ask(d, "big.example.org", edns=-1, tcp=True)              # TCP client: upstream TC -> TCP
    assert not r.flags & dns.flags.TC and len(r.answer[0]) == 60
    assert d.metric("nocpolicy_dns_upstream_queries_total", {"upstream": "unbound", "result": "tcp_ok"}) >= 1
    if shutil.which("dig"):
        out = subprocess.run(["dig", "+noedns", "-p", str(d.dns_port), "@127.0.0.1", "big.example.org"],
                             capture_output=True, text=True, timeout=10).stdout
        assert "Truncated, retrying in TCP mode" in out and "ANSWER: 60" in out


def test_tcp_several_queries_per_connection(env):
    d, _ = env
    names = ["www.example.org", "csam.example", "www.bardubar.com", "www.example.org"]
    with socket.create_connection(("127.0.0.1", d.dns_port), timeout=3) as s:
        for i, n in enumerate(names):        # pipelined: all written before reading
            w = dns.message.make_query(n, "A", use_edns=0)
            w.id = 1000 + i
            b = w.to_wire()
            s.sendall(len(b).to_bytes(2, "big") + b)
        got = {}
        for _ in names:
            ln = int.from_bytes(_recv(s, 2), "big")
            m = dns.message.from_wire(_recv(s, ln))
            got[m.id] = m.rcode()
    assert got == {1000: 0, 1001: 3, 1002: 3, 1003: 0}


def _recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_malformed_packets_never_stop_the_server(env):
    d, _ = env
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(b"\x00", ("127.0.0.1", d.dns_port))                              # too short: dropped
        bad = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
        s.sendto(bad, ("127.0.0.1", d.dns_port))                                   # pointer loop
        r = dns.message.from_wire(s.recv(512), question_only=True)
        assert r.id == 0xABCD and r.rcode() == dns.rcode.FORMERR
        s.sendto(b"\x00\x01" + b"\x01\x00" + b"\x00\x01" * 4 + b"\x3f" * 2000, ("127.0.0.1", d.dns_port))
        assert dns.message.from_wire(s.recv(512), question_only=True).rcode() == dns.rcode.FORMERR
    assert ask(d, "www.example.org").rcode() == dns.rcode.NOERROR
    assert d.metric("nocpolicy_dns_malformed_total") >= 3


def test_ipv6_listener_and_customer(env):
    d, _ = env
    port = int(d.extra_args[1].rsplit(":", 1)[1])
    r = ask(d, "www.bardubar.com", host="::1", port=port, source="::1")
    assert ede_codes(r) == [15]
    v = d.ctl_json("explain", "--client", "::1", "--name", "www.bardubar.com")
    assert v["customer"] == "c-v6"


def test_optout_on_off_while_running_and_audited(env):
    d, _ = env
    name = "www.bardubar.com"
    assert ede_codes(ask(d, name)) == [15]
    res = d.ctl("optout", "on", "c-home", "--reason", "customer request by phone", check=True)
    assert "opted OUT" in res.stdout
    r = ask(d, name)                                   # the very next query
    assert ede_codes(r) == [] and r.rcode() == dns.rcode.NXDOMAIN   # forwarded (unbound static zone)
    assert ede_codes(ask(d, "csam.example")) == [16]   # mandatory is never lifted
    explain = d.ctl("explain", "--client", "127.0.0.1", "--name", name, check=True).stdout
    assert "OPTED OUT" in explain and "does not apply" in explain and "ALLOW" in explain
    lst = d.ctl_json("optout", "list")
    row = next(c for c in lst["customers"] if c["customer"] == "c-home")
    assert row["optout"] is True and row["source"] == "runtime" and row["actor"] == "admin"
    d.ctl("optout", "off", "c-home", check=True)
    assert ede_codes(ask(d, name)) == [15]
    audit = d.ctl_json("audit", "--subject", "customer:c-home")["audit"]
    assert [a["after"]["security_optout"] for a in audit[:2]] == [False, True]
    assert d.metric("nocpolicy_optout_customers") == 1          # c-optout from the policy
    assert d.ctl("optout", "on", "nobody").returncode == 1


def test_explain_output_names_list_entry_and_class(env):
    d, _ = env
    out = d.ctl("explain", "--client", "127.0.0.9", "--name", "A.Sub.WWW.Bardubar.com.", check=True).stdout
    assert "unknown client: protect" in out
    assert "list cc (security) entry www.bardubar.com" in out or "list cc (security) entry bardubar.com" in out
    assert "BLOCK nxdomain by cc (security), EDE 15" in out


def test_detections_logged_pseudonymised(env):
    d, _ = env
    ask(d, "detect-me.csam.example", source="127.0.0.3")
    rows = d.ctl_json("detections", "--customer", "c-optin")["detections"]
    row = next(r for r in rows if r["name"] == "detect-me.csam.example")
    assert row["list"] == "csam" and row["class"] == "mandatory" and row["source"] == "dns"
    assert "127.0.0.3" not in row["client"] and len(row["client"]) == 20
    summ = d.ctl_json("detections", "--summary")["summary"]
    assert any(s["list"] == "csam" and s["count"] >= 1 for s in summ)
    text = d.ctl("detections", "--summary", check=True).stdout
    assert "csam" in text
    m = d.metrics()
    assert 'nocpolicy_dns_blocked_total{action="nxdomain",class="mandatory",list="csam"}' in m
    assert "c-optin" not in m and "csam.example" not in m


def test_list_update_runtime_entries(env):
    d, _ = env
    name = "fresh-cc.example.org"
    assert ede_codes(ask(d, name)) == []
    out = d.ctl("list-update", "cc", "--add", "fresh-cc.example.org", "--reason", "feed", check=True)
    assert "added 1" in out.stdout
    assert ede_codes(ask(d, "x." + name)) == [15]
    d.ctl("list-update", "cc", "--remove", name, check=True)
    assert ede_codes(ask(d, name)) == []
    assert d.ctl("list-update", "cc", "--add", "not a name").returncode == 1
    audit = d.ctl_json("audit", "--subject", "list:cc")["audit"]
    assert audit[0]["after"]["removed"] == [name] and audit[1]["after"]["added"] == [name]
    lists = d.ctl_json("lists")["lists"]
    assert {x["list"] for x in lists} == {"csam", "cc", "rpz", "ads"}
    assert d.metric("nocpolicy_blocklist_entries", {"list": "csam"}) == 2


def test_upstream_failure_servfail_with_ede(tmp_path):
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)      # receives, never answers
    blackhole.bind(("127.0.0.1", 0))
    try:
        refused = free_port()
        ups = f"""\
    - id: dead
      address: 127.0.0.1:{refused}
      timeout: 300ms
"""
        d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, None, upstreams=ups)).start()
        try:
            r = ask(d, "www.example.org")
            assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) == [23]    # port unreachable
            assert ede_codes(ask(d, "csam.example")) == [16]                   # blocks still work
        finally:
            d.stop()
        tmp2 = tmp_path / "second"
        tmp2.mkdir()
        ups = f"""\
    - id: silent
      address: 127.0.0.1:{blackhole.getsockname()[1]}
      timeout: 300ms
"""
        d = DaemonProcess(tmp2, policies=dns_policy(tmp2, None, upstreams=ups)).start()
        try:
            r = ask(d, "www.example.org")
            assert r.rcode() == dns.rcode.SERVFAIL and ede_codes(r) == [22]    # timeout
            wait_for(lambda: d.metric("nocpolicy_dns_upstream_queries_total",
                                      {"upstream": "silent", "result": "timeout"}), 5)
        finally:
            d.stop()
    finally:
        blackhole.close()


def test_retry_on_second_upstream(tmp_path):
    ub = Unbound(tmp_path, LOCAL_DATA).start()
    blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole.bind(("127.0.0.1", 0))
    try:
        ups = f"""\
    - id: silent
      address: 127.0.0.1:{blackhole.getsockname()[1]}
      timeout: 200ms
    - id: good
      address: 127.0.0.1:{ub.port}
      timeout: 500ms
"""
        d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, None, upstreams=ups)).start()
        try:
            r = ask(d, "www.example.org")
            assert r.rcode() == dns.rcode.NOERROR and [str(x) for x in r.answer[0]] == ["192.0.2.80"]
            assert d.metric("nocpolicy_dns_upstream_queries_total", {"upstream": "silent", "result": "retry"}) >= 1
        finally:
            d.stop()
    finally:
        blackhole.close()
        ub.stop()


def test_workers_share_the_port_and_apply_optout_at_once(tmp_path):
    ub = Unbound(tmp_path, LOCAL_DATA).start()
    d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, ub.port), extra_args=["--workers", "2"])
    try:
        d.start()
        wait_for(lambda: len(d.ctl_json("status")["components"]["dns"].get("workers", [])) == 1
                 and d.ctl_json("status")["components"]["dns"]["workers"][0]["running"], 10)

        def blocked_everywhere(expect: bool) -> bool:
            # fresh sockets: SO_REUSEPORT spreads them over both processes
            return all((ede_codes(ask(d, "www.bardubar.com")) == [15]) is expect for _ in range(24))

        wait_for(lambda: blocked_everywhere(True), 10, what="both workers serving")
        d.ctl("optout", "on", "c-home", check=True)
        assert blocked_everywhere(False)            # every worker, on the very next queries
        d.ctl("optout", "off", "c-home", check=True)
        assert blocked_everywhere(True)
        d.ctl("list-update", "cc", "--add", "worker-feed.example", check=True)
        assert all(ede_codes(ask(d, "worker-feed.example")) == [15] for _ in range(24))
        wait_for(lambda: d.metric("nocpolicy_dns_queries_total", {"transport": "udp"}) >= 96, 5,
                 what="counters of both processes in /metrics")
        dns_status = wait_for(lambda: (s := d.ctl_json("status")["components"]["dns"])["workers"][0]["udp_queries"]
                              and s, 5, what="the worker's report")
        assert dns_status["queries"]["queries"]["udp"] > 0          # the main process answered some too
    finally:
        d.stop()
        ub.stop()
