"""Passive detection end to end with a real unbound: dnstap -> detection -> RPZ -> NXDOMAIN.

unbound (Debian, built with --enable-dnstap) answers example.test from an
auth-zone (no internet), sends dnstap over Frame Streams to the socket nocpolicyd
listens on, and loads the RPZ files nocpolicyd writes (security zone limited to
clients tagged nocp_protected by the generated ACL include). Clients are
127.0.0.2 (customer cust-a), 127.0.0.3 (cust-b, opted out) and 127.0.0.4 (cust-c).
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap

import dns.message
import dns.query
import dns.rcode
import pytest

from helpers import free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("unbound") is None or shutil.which("unbound-control") is None,
                                reason="unbound is not installed (tests/run-all.sh installs it)")

ZONE = """\
$ORIGIN example.test.
@ 3600 IN SOA ns.example.test. root.example.test. 1 3600 600 86400 60
@ 3600 IN NS ns.example.test.
ns 3600 IN A 127.0.0.1
www 3600 IN A 192.0.2.7
cc 3600 IN A 203.0.113.66
x.cc 3600 IN A 203.0.113.67
csam 3600 IN A 203.0.113.99
"""


def write_policy(root, sock, rpz_dir, control_conf, ctl_port) -> None:
    pol = root / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "mandatory.txt").write_text("csam.example.test\n")
    (pol / "lists" / "cc.txt").write_text("# C&C\ncc.example.test\n")
    (pol / "settings.yaml").write_text("settings:\n  node: test-node\n")
    (pol / "customers.yaml").write_text(textwrap.dedent("""\
        customers:
          - id: cust-a
            name: "Customer A"
            prefixes: [127.0.0.2/32]
          - id: cust-b
            name: "Customer B (opted out)"
            prefixes: [127.0.0.3/32]
            security_optout: true
          - id: cust-c
            name: "Customer C"
            prefixes: [127.0.0.4/32]
        """))
    (pol / "dns.yaml").write_text(textwrap.dedent("""\
        dns:
          lists:
            - id: mandatory
              class: mandatory
              source: lists/mandatory.txt
            - id: cc
              class: security
              source: lists/cc.txt
        """))
    ctl = ["unbound-control", "-c", str(control_conf)]
    (pol / "detect.yaml").write_text(textwrap.dedent(f"""\
        detect:
          dnstap:
            socket: {sock}
          enforce: [rpz, events]
          block_for: 1h
          events_interval: 1s
          rpz:
            directory: {rpz_dir}
            views: tags
            ttl: 5
            reload_zone: {ctl + ["auth_zone_reload", "{zone}"]}
            reload_config: {ctl + ["reload"]}
        """))


def unbound_conf(tmp, port, ctl_port, sock, rpz_dir) -> str:
    return textwrap.dedent(f"""\
        server:
          interface: 127.0.0.1@{port}
          access-control: 127.0.0.0/8 allow
          username: ""
          chroot: ""
          directory: "{tmp}"
          pidfile: ""
          use-syslog: no
          logfile: "{tmp}/unbound.log"
          verbosity: 1
          do-daemonize: no
          num-threads: 1
          local-zone: "test." nodefault
          module-config: "respip iterator"
        include: "{rpz_dir}/unbound-acl.conf"
        remote-control:
          control-enable: yes
          control-interface: 127.0.0.1
          control-port: {ctl_port}
          control-use-cert: no
        auth-zone:
          name: "example.test."
          zonefile: "{tmp}/example.test.zone"
          for-downstream: no
          for-upstream: yes
        rpz:
          name: "mandatory.rpz.nocpolicy."
          zonefile: "{rpz_dir}/mandatory.rpz"
        rpz:
          name: "security.rpz.nocpolicy."
          zonefile: "{rpz_dir}/security.rpz"
          tags: "nocp_protected"
        dnstap:
          dnstap-enable: yes
          dnstap-socket-path: "{sock}"
          dnstap-send-identity: yes
          dnstap-identity: "unbound-test"
          dnstap-log-client-query-messages: yes
          dnstap-log-client-response-messages: yes
        """)


def ask(port: int, name: str, source: str) -> int:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, "127.0.0.1", port=port, source=source, timeout=3)
    return r.rcode()


@pytest.fixture
def setup(tmp_path, daemon):
    """A nocpolicyd with a dnstap socket and RPZ output, then unbound wired to both."""
    sock = tmp_path / "dnstap.sock"
    rpz_dir = tmp_path / "rpz"
    conf = tmp_path / "unbound.conf"
    port, ctl_port = free_port(), free_port()
    write_policy(tmp_path, sock, rpz_dir, conf, ctl_port)
    d = daemon(policies=tmp_path / "policies")
    wait_for(lambda: (rpz_dir / "unbound-acl.conf").exists() and (rpz_dir / "security.rpz").exists(),
             10, what="RPZ files written at start")
    (tmp_path / "example.test.zone").write_text(ZONE)
    conf.write_text(unbound_conf(tmp_path, port, ctl_port, sock, rpz_dir))
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    ub = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: ask(port, "www.example.test", "127.0.0.1") == dns.rcode.NOERROR, 10,
                 what="unbound answering")
        wait_for(lambda: d.ctl_json("detect", "status")["inputs"]["dnstap"]["connections"] >= 1, 10,
                 what="unbound connected to dnstap")
        yield d, port, rpz_dir, tmp_path
    finally:
        ub.terminate()
        try:
            ub.wait(5)
        except subprocess.TimeoutExpired:
            ub.kill()
            ub.wait()


def detections(d, customer: str) -> list[dict]:
    return d.ctl_json("detections", "--customer", customer)["detections"]


def metric(d, source: str, lst: str, cls: str) -> float:
    return d.metric("nocpolicy_detections_total", {"source": source, "list": lst, "class": cls}) or 0.0


def test_dnstap_detection_rpz_and_optout(setup):
    d, port, rpz_dir, tmp = setup
    # cust-a looks up a C&C name through unbound: answered (unbound does not know yet) ...
    assert ask(port, "cc.example.test", "127.0.0.2") == dns.rcode.NOERROR
    # ... and detected from dnstap, for cust-a, once (query and response are one lookup)
    rows = wait_for(lambda: detections(d, "cust-a"), 10, what="a detection for cust-a")
    assert [(r["list"], r["class"], r["source"], r["name"]) for r in rows] == \
        [("cc", "security", "dnstap", "cc.example.test")]
    assert rows[0]["client"] != "127.0.0.2"           # pseudonymised
    wait_for(lambda: metric(d, "dnstap", "cc", "security") == 1.0, 5, what="detections metric")

    # the RPZ now carries the entry (and its subtree) and unbound answers NXDOMAIN to cust-a
    wait_for(lambda: "cc.example.test CNAME ." in (rpz_dir / "security.rpz").read_text(), 5,
             what="security RPZ entry")
    assert "*.cc.example.test CNAME ." in (rpz_dir / "security.rpz").read_text()
    wait_for(lambda: ask(port, "cc.example.test", "127.0.0.2") == dns.rcode.NXDOMAIN, 10,
             what="unbound NXDOMAIN from the RPZ")
    assert ask(port, "x.cc.example.test", "127.0.0.4") == dns.rcode.NXDOMAIN
    # the opted-out customer is not covered by the security zone (unbound access-control-tag)
    assert ask(port, "cc.example.test", "127.0.0.3") == dns.rcode.NOERROR

    # opted out: a security hit is not a detection ...
    assert ask(port, "x.cc.example.test", "127.0.0.3") == dns.rcode.NOERROR
    # ... but the mandatory list still counts for the opted-out customer
    assert ask(port, "csam.example.test", "127.0.0.3") == dns.rcode.NOERROR
    rows = wait_for(lambda: detections(d, "cust-b"), 10, what="a mandatory detection for cust-b")
    assert {(r["list"], r["class"]) for r in rows} == {("mandatory", "mandatory")}
    wait_for(lambda: ask(port, "csam.example.test", "127.0.0.4") == dns.rcode.NXDOMAIN, 10,
             what="mandatory RPZ applies to everyone")
    assert ask(port, "csam.example.test", "127.0.0.3") == dns.rcode.NXDOMAIN
    assert metric(d, "dnstap", "cc", "security") >= 1.0
    assert metric(d, "dnstap", "mandatory", "mandatory") >= 1.0

    # a benign name is neither logged nor published
    assert ask(port, "www.example.test", "127.0.0.2") == dns.rcode.NOERROR
    st = d.ctl_json("detect", "status")
    assert st["blocks"]["names"] == 2
    assert st["inputs"]["observed"]["dnstap"] >= 10


def test_runtime_optout_rewrites_acl(setup):
    d, port, rpz_dir, tmp = setup
    acl = (rpz_dir / "unbound-acl.conf").read_text()
    assert 'access-control-tag: 127.0.0.2/32 "nocp_protected"' in acl
    assert 'access-control-tag: 127.0.0.3/32 "nocp_optout"' in acl
    assert ask(port, "cc.example.test", "127.0.0.2") == dns.rcode.NOERROR
    wait_for(lambda: ask(port, "cc.example.test", "127.0.0.2") == dns.rcode.NXDOMAIN, 10,
             what="RPZ applied to cust-a")
    # cust-a opts out at runtime: the ACL include changes, unbound reloads, cust-a is served again
    res = d.ctl("optout", "on", "cust-a", "--reason", "test")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: 'access-control-tag: 127.0.0.2/32 "nocp_optout"' in
             (rpz_dir / "unbound-acl.conf").read_text(), 10, what="ACL include rewritten")
    wait_for(lambda: ask(port, "cc.example.test", "127.0.0.2") == dns.rcode.NOERROR, 10,
             what="opted-out customer answered normally")
    before = len(detections(d, "cust-a"))
    assert ask(port, "x.cc.example.test", "127.0.0.2") == dns.rcode.NOERROR
    # dnstap frames arrive in order: once the mandatory lookup sent after it is logged, the
    # security lookup before it has been judged (and must not have produced a detection)
    ask(port, "csam.example.test", "127.0.0.2")
    rows = wait_for(lambda: [r for r in detections(d, "cust-a") if r["class"] == "mandatory"], 10,
                    what="the mandatory marker detection")
    assert len(detections(d, "cust-a")) == before + len(rows)
    assert all(r["name"] != "x.cc.example.test" for r in detections(d, "cust-a"))
