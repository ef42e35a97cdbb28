"""Passive detection under forged and crafted input (issue 14).

* On a veth pair in a namespace the test creates, forged frames (a "response" from an
  address that is not a resolver, a response from the resolver's address that pairs
  with no query, a crafted compression bomb) change nothing: no detection, no nft
  element; a real lookup whose answer names the resolver itself or loopback blocks
  only the C&C address.
* Pure parts: name decoding follows backward pointers only and stops at 255 octets
  while decoding; answers are read up to a fixed number of records; responses pair
  with their query once; the never-block set.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dnslib
import pytest

from helpers import free_port, wait_for
from nocpolicy.detect.message import MessageError, answer_addresses, cname_targets, question
from nocpolicy.detect.observation import Observation
from nocpolicy.detect.pipeline import Pipeline
from nocpolicy.detect.trust import build_trust
from nocpolicy.dns.wire import MAX_ANSWER_RRS, WireError, answer_records, read_name
from test_detect_capture import Responder, dig, metric, veth, write_policy  # noqa: F401 (fixture)

# --- crafted messages -------------------------------------------------------------------------


def header(qid=1, flags=0x8180, qd=1, an=0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, 0, 0)


def pointer_bomb() -> bytes:
    """A question whose name is 5 labels of 63 octets, each ending in a pointer to the one
    before: every pointer points backward, but the name passes 255 octets."""
    body = b""
    starts = []
    for i in range(5):
        starts.append(12 + len(body))
        label = bytes([63]) + b"a" * 63
        body += label + (b"\x00" if i == 0 else struct.pack("!H", 0xC000 | starts[i - 1]))
    return header(flags=0x0100) + body[:0] + body + b"\x00\x01\x00\x01"


def response_bomb(rrs: int = 5000) -> bytes:
    """A 'response' with thousands of CNAME records, every name a pointer back to the question."""
    q = dnslib.DNSRecord.question("a.example", "A").pack()[12:]
    out = bytearray(header(an=rrs) + q)
    for _ in range(rrs):
        out += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 2) + b"\xc0\x0c"
    return bytes(out)


def test_forward_and_self_pointers_are_refused():
    msg = header(flags=0x0100) + b"\xc0\x0c" + b"\x00\x01\x00\x01"           # points at itself
    with pytest.raises(WireError, match="backward"):
        read_name(msg, 12)
    msg = header(flags=0x0100) + b"\xc0\x20" + b"\x00\x01\x00\x01" + b"\x00" * 20   # points ahead
    with pytest.raises(WireError, match="backward"):
        read_name(msg, 12)
    with pytest.raises(MessageError):
        question(msg)


def test_the_255_octet_limit_is_checked_while_decoding():
    bomb = pointer_bomb()
    with pytest.raises(WireError, match="255"):
        read_name(bomb, len(bomb) - 6)
    # a legitimate long name (253 characters) still reads
    name = ".".join(["b" * 63] * 3) + "." + "c" * 61
    assert len(name) == 253
    assert read_name(dnslib.DNSRecord.question(name).pack(), 12)[0] == name


def test_a_response_bomb_is_read_only_up_to_the_record_limit():
    bomb = response_bomb()
    assert len(bomb) > 60_000 and len(cname_targets(bomb)) == MAX_ANSWER_RRS
    recs = answer_records(bomb)
    assert len(recs) <= MAX_ANSWER_RRS
    assert len(cname_targets(bomb)) <= MAX_ANSWER_RRS
    assert answer_addresses(bomb)[0] == ()


def test_answer_addresses_by_hand():
    q = dnslib.DNSRecord.question("x.example", "A")
    r = q.reply()
    r.add_answer(dnslib.RR("x.example", dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("y.example"), ttl=5))
    r.add_answer(dnslib.RR("y.example", dnslib.QTYPE.A, rdata=dnslib.A("203.0.113.9"), ttl=5))
    r.add_answer(dnslib.RR("y.example", dnslib.QTYPE.AAAA, rdata=dnslib.AAAA("2001:db8::9"), ttl=5))
    assert answer_addresses(r.pack()) == (("203.0.113.9", "2001:db8::9"), ("y.example",))


# --- pairing and never-block ---------------------------------------------------------------------


class _Guard:
    def judge(self, client, name):
        hit = name.endswith("cc.example")
        return SimpleNamespace(blocked=hit, list="cc" if hit else None, cls="security", customer="a")

    def record(self, *a):
        pass


def _resp(qid, *addrs, name="www.cc.example", qtype="A"):
    q = dnslib.DNSRecord.question(name, qtype)
    q.header.id = qid
    r = q.reply()
    for a in addrs:
        r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(a), ttl=60))
    return r.pack()


def test_captured_responses_count_only_when_they_pair_with_a_query():
    blocked = []
    p = Pipeline(_Guard(), lambda v, obs: blocked.append(obs) if obs.response else None)

    def q(qid, server="10.0.0.53", qtype=1):
        return Observation("capture", "192.0.2.10", "www.cc.example", qtype, False, 5000, qid, server=server)

    def r(qid, server="10.0.0.53", qtype=1):
        return Observation("capture", "192.0.2.10", "www.cc.example", qtype, True, 5000, qid,
                           _resp(qid, "203.0.113.5"), server=server)

    p.observe(r(7))                                      # no query seen: forged
    p.observe_many([q(8), r(8, server="10.9.9.9")])      # answered by another server than asked
    p.observe_many([q(9), r(9, qtype=28)])               # another question
    assert blocked == [] and p.unpaired == 3
    p.observe_many([q(10), r(10), r(10)])                # paired once; the second is not believed
    assert len(blocked) == 1 and p.unpaired == 4
    assert p.detected == {("capture", "cc", "security"): 3}   # queries 8, 9, 10 were lookups


def test_never_block_set():
    pol = SimpleNamespace(
        dns=SimpleNamespace(upstreams=[SimpleNamespace(address=("198.51.100.53", 53))],
                            lists=[SimpleNamespace(sinkhole_a=ipaddress.ip_address("192.0.2.250"),
                                                   sinkhole_aaaa=None)]),
        detect=SimpleNamespace(resolvers=(), never_block=(ipaddress.ip_network("203.0.113.0/28"),)))
    t = build_trust(pol, frozenset({"10.0.0.1"}))
    assert t.resolver("198.51.100.53") and t.resolver("10.0.0.1") and not t.resolver("10.0.0.2")
    for a in ("127.0.0.1", "::1", "0.0.0.0", "198.51.100.53", "10.0.0.1", "192.0.2.250", "203.0.113.5",
              "224.0.0.1", "fe80::1", "::ffff:127.0.0.1"):
        assert not t.blockable(a), a
    for a in ("203.0.113.66", "2001:db8::66", "10.0.0.2"):
        assert t.blockable(a), a
    pol.detect.resolvers = (ipaddress.ip_address("10.0.0.53"),)
    t = build_trust(pol, frozenset({"10.0.0.1"}))
    assert t.resolver("10.0.0.53") and not t.resolver("198.51.100.53")
    assert not t.blockable("10.0.0.53")


# --- forged frames on a veth ----------------------------------------------------------------------


class SelfResponder(Responder):
    """Answers ``self.cc.example.test`` with the resolver's own address and loopback too."""

    own = ""

    def answer(self, data: bytes) -> bytes:
        q = dnslib.DNSRecord.parse(data)
        if not str(q.q.qname).startswith("self."):
            return Responder.answer(data)
        r = q.reply()
        for a in (self.own, "127.0.0.1", "203.0.113.66"):
            r.add_answer(dnslib.RR(q.q.qname, dnslib.QTYPE.A, rdata=dnslib.A(a), ttl=60))
        return r.pack()


def _mac(ns: str | None, ifname: str) -> str:
    cmd = ["ip", "-j", "link", "show", ifname] if ns is None else ["ip", "-n", ns, "-j", "link", "show", ifname]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)[0]["address"]


def _send_frames(ns: str, ifname: str, frames: list[bytes]) -> None:
    code = ("import socket,sys; s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind((sys.argv[1], 0));"
            " [s.send(bytes.fromhex(h)) for h in sys.argv[2:]]")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, ifname, *[f.hex() for f in frames]],
                   check=True, timeout=30)


def _udp_frame(src_mac, dst_mac, src, dst, sport, dport, payload: bytes) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)


def _elements(ns) -> list[str]:
    res = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "nocpolicy_detect",
                          "block4"], capture_output=True, text=True)
    if res.returncode:
        return []
    sets = [x["set"] for x in json.loads(res.stdout)["nftables"] if "set" in x]
    return [e["elem"]["val"]["concat"][1] for e in sets[0].get("elem", [])]


def test_forged_frames_on_a_veth_steer_nothing(tmp_path: Path, daemon, veth):  # noqa: F811
    ns, host_if, net = veth
    peer_if = "ndp" + host_if[3:]
    port = free_port(host=f"{net}.1")
    SelfResponder.own = f"{net}.1"
    responder = SelfResponder(f"{net}.1", port)
    try:
        d = daemon(policies=write_policy(tmp_path, ns, host_if, net, port))
        wait_for(lambda: d.ctl_json("detect", "status")["state"] == "running", 20, what="capture running")
        peer_mac, host_mac = _mac(ns, peer_if), _mac(None, host_if)
        client, resolver, stranger = f"{net}.2", f"{net}.1", f"{net}.99"
        frames = [
            # a "response" from an address that is not a resolver, naming a listed domain
            _udp_frame(peer_mac, host_mac, stranger, client, port, 40000, _resp(1234, "198.51.100.77",
                                                                                 name="cc.example.test")),
            # one from the resolver's address that answers no query seen
            _udp_frame(peer_mac, host_mac, resolver, client, port, 40001, _resp(4321, "198.51.100.78",
                                                                                 name="cc.example.test")),
            # a crafted compression bomb as a query, and as a response from the resolver
            _udp_frame(peer_mac, host_mac, client, resolver, 40002, port, pointer_bomb()),
            _udp_frame(peer_mac, host_mac, resolver, client, port, 40003, response_bomb(90)),
        ]
        _send_frames(ns, peer_if, frames)
        wait_for(lambda: d.ctl_json("detect", "status")["inputs"]["capture"][0]["frames"] >= 4, 20,
                 what="the forged frames captured")
        st = d.ctl_json("detect", "status")["inputs"]
        assert st["capture"][0]["foreign_responses"] >= 1 and st["unpaired_responses"] >= 2
        assert metric(d) == 0 and _elements(ns) == []
        # a real lookup whose answer holds the resolver's own address and loopback besides the C&C one
        out = dig(ns, resolver, port, "self.cc.example.test")
        assert "203.0.113.66" in out and resolver in out
        wait_for(lambda: _elements(ns), 20, what="nft element")
        assert _elements(ns) == ["203.0.113.66"]
        assert d.ctl_json("detect", "status")["inputs"]["never_blocked_addresses"] >= 2
        assert d.metric("nocpolicy_detect_refused_total", {"reason": "foreign"}) >= 1
    finally:
        responder.close()
