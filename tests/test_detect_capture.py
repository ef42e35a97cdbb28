"""Live capture on a veth pair: real DNS queries from a namespace the test creates.

Topology: netns <ns> holds the client end (10.R.S.2/24, customer cust-n); the root
namespace holds the other end (10.R.S.1/24) where a small DNS responder answers on
a free port. nocpolicyd captures on the root end with scapy; nft address blocks
are applied inside the client namespace (detect.nft.command: ip netns exec <ns> nft),
so nothing is left behind when the namespace is deleted.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import textwrap
import threading

import dnslib
import pytest

from conftest import need_root_netns
from helpers import free_port, wait_for
from nocpolicy.detect.packets import bpf_program, observations

pytestmark = pytest.mark.netns


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check)


class Responder:
    """UDP + TCP DNS answering A 203.0.113.66 / AAAA 2001:db8:66::1 for every name."""

    def __init__(self, host: str, port: int):
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((host, port))
        self.tcp.listen(8)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._udp, daemon=True),
                        threading.Thread(target=self._tcp, daemon=True)]
        for t in self.threads:
            t.start()

    @staticmethod
    def answer(data: bytes) -> bytes:
        q = dnslib.DNSRecord.parse(data)
        r = q.reply()
        if q.q.qtype == dnslib.QTYPE.A:
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A("203.0.113.66"), ttl=60))
        return r.pack()

    def _udp(self):
        while not self.stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            self.udp.sendto(self.answer(data), addr)

    def _tcp(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                ln = int.from_bytes(conn.recv(2), "big")
                data = b""
                while len(data) < ln:
                    data += conn.recv(ln - len(data))
                resp = self.answer(data)
                conn.sendall(len(resp).to_bytes(2, "big") + resp)

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def veth():
    why = need_root_netns()
    if why:
        pytest.skip(why)
    tag = f"{random.randrange(16**6):06x}"
    ns, host_if, peer_if = f"nocpd{tag}", f"ndh{tag}", f"ndp{tag}"
    net = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", ns)
        sh("ip", "addr", "add", f"{net}.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", peer_if)
        sh("ip", "-n", ns, "link", "set", peer_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns, host_if, net
    finally:
        sh("ip", "link", "del", host_if, check=False)
        sh("ip", "netns", "del", ns, check=False)


def write_policy(root, ns, iface, net, port):
    pol = root / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "mandatory.txt").write_text("csam.example.test\n")
    (pol / "lists" / "cc.txt").write_text("cc.example.test\n")
    (pol / "customers.yaml").write_text(textwrap.dedent(f"""\
        customers:
          - {{id: cust-n, name: "Namespace customer", prefixes: [{net}.0/24]}}
        """))
    (pol / "dns.yaml").write_text(textwrap.dedent("""\
        dns:
          lists:
            - {id: mandatory, class: mandatory, source: lists/mandatory.txt}
            - {id: cc, class: security, source: lists/cc.txt}
        """))
    (pol / "detect.yaml").write_text(textwrap.dedent(f"""\
        detect:
          capture:
            - {{interface: {iface}, port: {port}}}
          enforce: [nft, events]
          block_for: 10m
          nft:
            command: [ip, netns, exec, {ns}, nft]
        """))
    return pol


def dig(ns, server, port, name, *extra):
    res = sh("ip", "netns", "exec", ns, "dig", f"@{server}", "-p", str(port), name, "+tries=1", "+time=2",
             *extra, check=False)
    assert "status: NOERROR" in res.stdout, res.stdout + res.stderr
    return res.stdout


def metric(d, lst="cc", cls="security"):
    return d.metric("nocpolicy_detections_total", {"source": "capture", "list": lst, "class": cls}) or 0.0


def test_capture_on_veth(tmp_path, daemon, veth):
    ns, iface, net = veth
    port = free_port(host=f"{net}.1")
    responder = Responder(f"{net}.1", port)
    try:
        d = daemon(policies=write_policy(tmp_path, ns, iface, net, port))
        wait_for(lambda: d.ctl_json("detect", "status")["state"] == "running", 10, what="capture running")
        # a benign lookup: observed, not detected
        dig(ns, f"{net}.1", port, "www.example.test")
        wait_for(lambda: d.ctl_json("detect", "status")["inputs"]["observed"]["capture"] >= 2, 10,
                 what="query and response captured")
        assert metric(d) == 0
        # a C&C lookup over UDP: one detection (query + response are one lookup), for cust-n
        out = dig(ns, f"{net}.1", port, "cc.example.test")
        assert "203.0.113.66" in out
        wait_for(lambda: metric(d) == 1, 10, what="capture detection")
        rows = wait_for(lambda: d.ctl_json("detections", "--customer", "cust-n")["detections"], 10,
                        what="detection log row")
        assert (rows[0]["list"], rows[0]["source"], rows[0]["name"]) == ("cc", "capture", "cc.example.test")
        # ... and the address in the answer is blocked for the customer's prefix, with a timeout
        def elements():
            res = sh("ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "nocpolicy_detect",
                     "block4", check=False)
            if res.returncode:
                return []
            sets = [x["set"] for x in json.loads(res.stdout)["nftables"] if "set" in x]
            return sets[0].get("elem", [])
        elems = wait_for(elements, 10, what="nft element")
        e = elems[0]["elem"]
        assert e["val"]["concat"] == [{"prefix": {"addr": f"{net}.0", "len": 24}}, "203.0.113.66"]
        assert 590 <= e["timeout"] <= 600 and 0 < e["expires"] <= e["timeout"]
        # over TCP too (a DNS message at the start of a segment)
        dig(ns, f"{net}.1", port, "x.cc.example.test", "+tcp")
        wait_for(lambda: metric(d) == 2, 10, what="TCP capture detection")
        st = d.ctl_json("detect", "status")
        assert st["blocks"]["addresses"] == 1
        assert st["inputs"]["capture"][0]["frames"] >= 6
    finally:
        responder.close()


# --- pure parts -----------------------------------------------------------------------------

def _frame_udp(src, dst, sport, dport, payload: bytes) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def test_frames_to_observations():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import UDP as UDP6
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    q = dnslib.DNSRecord.question("CC.Example.Test", "A")
    q.header.id = 4242
    wire = q.pack()
    obs = observations(_frame_udp("10.1.1.2", "10.1.1.1", 40000, 53, wire))
    assert [(o.client, o.name, o.port, o.qid, o.response) for o in obs] == \
        [("10.1.1.2", "cc.example.test", 40000, 4242, False)]
    resp = Responder.answer(wire)
    obs = observations(_frame_udp("10.1.1.1", "10.1.1.2", 53, 40000, resp))
    assert obs[0].response and obs[0].client == "10.1.1.2" and obs[0].key == ("10.1.1.2", 40000, 4242,
                                                                                  "cc.example.test")
    # IPv6 + two DNS messages in one TCP segment
    v6 = bytes(Ether() / IPv6(src="2001:db8::2", dst="2001:db8::1") / UDP6(sport=5000, dport=53) / wire)
    assert observations(v6)[0].client == "2001:db8::2"
    seg = len(wire).to_bytes(2, "big") + wire + len(wire).to_bytes(2, "big") + wire
    tcp = bytes(Ether() / IP(src="10.1.1.2", dst="10.1.1.1") / TCP(sport=40001, dport=53, flags="PA") / seg)
    assert len(observations(tcp)) == 2
    # not DNS, wrong port, junk: nothing, no exception
    assert observations(_frame_udp("10.1.1.2", "10.1.1.1", 40000, 5353, wire)) == []
    assert observations(_frame_udp("10.1.1.2", "10.1.1.1", 40000, 53, b"\x00" * 5)) == []
    assert observations(b"\xff" * 10) == []


def test_bpf_program_shape():
    prog = bpf_program(53)
    assert len(prog) == 22
    for pc, (code, jt, jf, _k) in enumerate(prog):
        if code in (0x15, 0x45):
            assert 0 <= pc + 1 + jt < len(prog) and 0 <= pc + 1 + jf < len(prog)
    assert prog[-2] == (0x06, 0, 0, 0x40000) and prog[-1] == (0x06, 0, 0, 0)
