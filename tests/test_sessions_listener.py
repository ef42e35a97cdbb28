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


def radius_settings() -> RadiusSettings:
    """One NAS client (loopback), customers named by User-Name before the "@"."""
    return RadiusSettings(clients=(RadiusClient("bng9", ipaddress.ip_network("127.0.0.0/8"), "x", secret=SECRET),),
                          customer_from=CustomerFrom("User-Name", re.compile(r"^(?P<id>[^@]+)@")))


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
    settings = radius_settings()
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


def test_a_failed_commit_answers_none_of_its_requests_and_their_retransmissions_are_answered(tmp_path):
    """The store refuses group commits: none of the requests gathered into them is
    answered (the NAS must retransmit: nothing was promised), and their retransmissions are
    processed afresh, recorded and answered once the next commit is durable."""
    from nocpolicy.errors import StoreError
    store = Store(tmp_path / "db.sqlite")
    hist = History(store)
    settings = radius_settings()
    book = Book(LiveTable())
    refusing = [True]

    def write(ops):
        if refusing[0]:
            raise StoreError("disk full (test)")
        hist.write(ops)

    proto = None

    def failed(exc):
        proto.forget_pending()
        book.table.clear()          # what the component does: reload the live table from the store

    commit = GroupCommit(write, delay=0.05, on_failure=failed)
    proto = AccountingProtocol(lambda: settings, book, commit)
    (queue,) = requests()[:1]
    wires = [p.RequestPacket() for p in queue[:20]]

    async def main():
        transport = await listen(proto, "127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        task = asyncio.create_task(commit.run())
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setblocking(False)
        c.connect(("127.0.0.1", port))
        try:
            for w in wires:
                c.send(w)
            deadline = time.monotonic() + 30          # a poll with a deadline
            while time.monotonic() < deadline:
                if proto.counts[("start", "ok")] == len(wires) and commit.failures:
                    break
                await asyncio.sleep(0.01)
            await commit.flush()             # whatever was still gathered: refused too
            assert proto.counts[("start", "ok")] == len(wires) and commit.failures >= 1
            await asyncio.sleep(0.2)
            unanswered: list[list[bytes]] = [[]]
            drain([c], unanswered)
            refusing[0] = False              # the disk is back
            again = await burst([c], [wires])   # the NAS retransmits the same bytes
        finally:
            c.close()
            task.cancel()
            transport.close()
        return unanswered[0], again[0]

    unanswered, again = asyncio.run(main())
    try:
        assert unanswered == [], "nothing answered for a commit that was not durable"
        assert len(again) == len(wires), "each retransmission answered once"
        by_id = {a[1]: a for a in again}
        for p in queue[:20]:
            reply = rp.AcctPacket(packet=by_id[p.id], secret=SECRET, dict=radius.dictionary())
            assert p.VerifyReply(reply, by_id[p.id])
        assert proto.counts[("start", "ok")] == 2 * len(wires), "the retransmissions were processed again"
        rows = hist._r.execute("SELECT count(*) FROM sessions WHERE nas = 'bng9/bng9'").fetchone()[0]
        assert rows == len(wires), "recorded once, by the commit that succeeded"
    finally:
        hist.close()
        store.close()
