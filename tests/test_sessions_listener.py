"""The accounting listener on a real loopback socket (batched reads and sends where the
platform has them): a burst of pyrad-encoded Starts from several client sockets is
answered once each, with Responses pyrad accepts (Proxy-State echoed), one record per
session; the same burst again from the same sockets (retransmissions) is answered again
from the reply cache without a second record."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time

from pyrad import packet as rp

from nocpolicy.policy.sessions import CustomerFrom, RadiusClient, RadiusSettings
from nocpolicy.sessions import radius
from nocpolicy.sessions.accounting import AccountingProtocol, listen
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.commit import GroupCommit
from nocpolicy.sessions.history import History
from nocpolicy.sessions.table import LiveTable
from nocpolicy.store import Store

SECRET = b"listener-secret"
SENDERS, PER_SENDER = 4, 60         # 240 requests: several recvmmsg and sendmmsg batches


def requests() -> list[list[rp.AcctPacket]]:
    d = radius.dictionary()
    out = []
    for s in range(SENDERS):
        q = []
        for i in range(PER_SENDER):
            k = s * PER_SENDER + i
            p = rp.AcctPacket(id=i, secret=SECRET, dict=d)
            p["Acct-Status-Type"] = 1
            p["Acct-Session-Id"] = f"L{k}"
            p["User-Name"] = f"c{k}@isp.example"
            p["NAS-Identifier"] = "bng9"
            p["Framed-IP-Address"] = str(ipaddress.IPv4Address("100.66.0.0") + k)
            p["Proxy-State"] = f"ps{k}".encode()
            q.append(p)
        out.append(q)
    return out


def drain(socks, got) -> None:
    for i, s in enumerate(socks):
        while True:
            try:
                got[i].append(s.recv(4096))
            except BlockingIOError:
                break


async def burst(socks, wires, wave: int = 32) -> list[list[bytes]]:
    """Send every queue's packets from its own socket, ``wave`` per socket at a time (within
    the kernel's default receive buffer: nothing may be dropped), waiting for each wave's
    answers (deadline); then a little longer: a second answer to one request would show."""
    got: list[list[bytes]] = [[] for _ in socks]
    deadline = time.monotonic() + 60
    for start in range(0, max(map(len, wires)), wave):
        for s, q in zip(socks, wires, strict=True):
            for w in q[start:start + wave]:
                s.send(w)
        want = sum(min(len(q), start + wave) for q in wires)
        while sum(map(len, got)) < want and time.monotonic() < deadline:
            drain(socks, got)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    drain(socks, got)
    return got


def test_burst_answered_once_each_and_again_for_retransmissions(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hist = History(store)
    settings = RadiusSettings(clients=(RadiusClient("bng9", ipaddress.ip_network("127.0.0.0/8"), "x",
                                                    secret=SECRET),),
                              customer_from=CustomerFrom("User-Name", re.compile(r"^(?P<id>[^@]+)@")))
    book = Book(LiveTable())
    committed = []

    def write(ops):
        hist.write(ops)
        committed.append(len(ops.inserts))

    proto = AccountingProtocol(lambda: settings, book, GroupCommit(write, delay=0.003))
    queues = requests()
    wires = [[p.RequestPacket() for p in q] for q in queues]

    async def main():
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        transport = await listen(proto, "127.0.0.1", port)
        task = asyncio.create_task(proto.commit.run())
        socks = []
        try:
            for _ in wires:
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.setblocking(False)
                c.connect(("127.0.0.1", port))
                socks.append(c)
            first = await burst(socks, wires)
            again = await burst(socks, wires)        # retransmissions: same sockets, same bytes
        finally:
            for c in socks:
                c.close()
            task.cancel()
            transport.close()
        return first, again

    first, again = asyncio.run(main())
    n = SENDERS * PER_SENDER
    try:
        for q, answers in zip(queues, first, strict=True):
            assert len(answers) == len(q), "each request answered exactly once"
            by_id = {a[1]: a for a in answers}
            assert len(by_id) == len(q)
            for p in q:
                reply = rp.AcctPacket(packet=by_id[p.id], secret=SECRET, dict=radius.dictionary())
                assert reply.code == rp.AccountingResponse
                assert p.VerifyReply(reply, by_id[p.id]), "pyrad accepts the Response"
                assert reply["Proxy-State"] == p["Proxy-State"]
        assert [sorted(a) for a in again] == [sorted(a) for a in first], "the same answers again"
        assert proto.counts[("unknown", "duplicate")] == n
        assert len(book.table) == n
        assert sum(committed) == n, "one record per session, whatever was sent again"
        rows = hist._r.execute("SELECT count(*) FROM sessions WHERE nas = 'bng9/bng9'").fetchone()[0]
        assert rows == n
    finally:
        hist.close()
        store.close()
