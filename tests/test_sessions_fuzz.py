"""Fuzz the accounting listener with mutated real packets (captured from radclient).

Each mutated packet is fed to the listener's protocol twice: as mutated (the
authenticator no longer matches) and re-signed with the shared secret (so the
attribute decoding is reached). Nothing may escape as an unexpected error; every
packet is either accepted or dropped with a counted reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import shutil
import socket
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nocpolicy.policy.sessions import CustomerFrom, RadiusClient, RadiusSettings
from nocpolicy.sessions.accounting import AccountingProtocol
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.commit import GroupCommit
from nocpolicy.sessions.history import History
from nocpolicy.sessions.table import LiveTable
from nocpolicy.store import Store
from sessions_fixtures import SECRET, acct

pytestmark = pytest.mark.skipif(not shutil.which("radclient"), reason="radclient not installed")

REQUESTS = [
    acct("Start", "F1", Delegated_IPv6_Prefix="2001:db8:5::/56", Framed_IPv6_Prefix="2001:db8:6::/64",
         Event_Timestamp=1764000000, Class="0x6331303031", Acct_Interim_Interval=300),
    acct("Interim-Update", "F1", Acct_Session_Time=300),
    acct("Stop", "F1", Acct_Session_Time=600, Acct_Terminate_Cause="Lost-Carrier"),
    'Acct-Status-Type = Accounting-On\nNAS-Identifier = "bng1.tokyo"\n',
]


def capture(attrs: str) -> bytes:
    """The bytes radclient sends for ``attrs`` (it gets no answer; we only listen)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(10)
        port = s.getsockname()[1]
        p = subprocess.Popen(["radclient", "-r", "1", "-t", "0.5", f"127.0.0.1:{port}", "acct", SECRET],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p.communicate(attrs.encode(), timeout=30)
        return s.recv(65535)


@pytest.fixture(scope="module")
def real_packets():
    return [capture(a) for a in REQUESTS]


def resign(wire: bytes) -> bytes:
    if len(wire) < 20:
        return wire
    return wire[:4] + hashlib.md5(wire[:4] + b"\0" * 16 + wire[20:] + SECRET.encode()).digest() + wire[20:]


class Sent:
    def __init__(self):
        self.out = []

    def sendto(self, data, addr):
        self.out.append(data)

    def is_closing(self):
        return False


@pytest.fixture
def proto(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hist = History(store)
    settings_ = RadiusSettings(clients=(RadiusClient("bng1", ipaddress.ip_network("127.0.0.0/8"), "x",
                                                     secret=SECRET.encode()),),
                               customer_from=CustomerFrom("User-Name"))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    book = Book(LiveTable())
    p = AccountingProtocol(lambda: settings_, book, GroupCommit(hist.write, delay=0))
    p.connection_made(Sent())
    yield p, loop
    loop.close()
    asyncio.set_event_loop(None)
    hist.close()
    store.close()


def test_real_packets_are_accepted_and_answered(proto, real_packets):
    p, loop = proto
    for i, wire in enumerate(real_packets):
        p.datagram_received(wire, ("127.0.0.1", 40000 + i))
    loop.run_until_complete(p.commit.flush())
    assert len(p.transport.out) == len(real_packets)
    assert {k for k in p.counts} == {("start", "ok"), ("interim", "ok"), ("stop", "ok"), ("accounting-on", "ok")}
    p.datagram_received(real_packets[0], ("192.0.2.1", 1))        # not a configured client
    assert p.counts[("unknown", "unknown-client")] == 1


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 400), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 400), st.just(0)),
    st.tuples(st.just("grow"), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("len"), st.integers(20, 400), st.integers(0, 255)),
)


def mutate(wire: bytes, muts) -> bytes:
    b = bytearray(wire)
    for kind, pos, val in muts:
        if kind == "flip" and b:
            b[pos % len(b)] ^= val
        elif kind == "cut":
            b = b[:pos]
        elif kind == "grow":
            b[pos % (len(b) + 1):pos % (len(b) + 1)] = bytes([val]) * (val % 7 + 1)
        elif kind == "len" and len(b) > pos:
            b[pos] = val                                # an attribute length octet, most likely
    if len(b) >= 4 and b[0] % 2:                        # half the time: a header length that agrees
        b[2:4] = struct.pack("!H", len(b))
    return bytes(b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(REQUESTS) - 1), muts=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_packets_never_break_the_listener(proto, real_packets, which, muts):
    p, loop = proto
    wire = mutate(real_packets[which], muts)
    before = len(p.book.table)
    for w in (wire, resign(wire)):
        p.datagram_received(w, ("127.0.0.1", 5000))
    loop.run_until_complete(p.commit.flush())
    assert p.counts[("unknown", "error")] == 0, "an unexpected exception reached the listener"
    assert len(p.book.table) <= before + 2           # at most one session per accepted datagram
