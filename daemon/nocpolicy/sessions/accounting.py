"""The RADIUS accounting listener (UDP): client check, duplicate detection, and the
Accounting-Response sent only once the request's record is durable.

A duplicate (same client address and port, Identifier and Request Authenticator,
RFC 5080 section 2.2.2) is answered again from the reply cache without touching
the book; one still waiting for its commit is ignored (its answer is coming).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from functools import partial

from ..clock import monotonic, wall
from ..dns import mmsg
from ..policy.sessions import RadiusClient, RadiusSettings
from . import radius
from .book import Book
from .commit import GroupCommit

log = logging.getLogger(__name__)

REPLY_CACHE = 65_536          # answered requests remembered for duplicates
LOG_EVERY = 10.0              # at most one log line per reason per 10 s
_PENDING = b""


class AccountingProtocol(asyncio.DatagramProtocol):
    def __init__(self, settings: Callable[[], RadiusSettings], book: Book, commit: GroupCommit,
                 clock: Callable[[], float] = wall):
        self.settings = settings
        self.book = book
        self.commit = commit
        self.clock = clock
        self.decoder = radius.Decoder()
        self.replier = radius.Replier()
        self.transport: asyncio.DatagramTransport | None = None
        self.replies: OrderedDict[tuple, bytes] = OrderedDict()
        self.counts: Counter = Counter()          # (status, result) -> n
        self._clients: dict[str, RadiusClient | None] = {}
        self._clients_of: RadiusSettings | None = None
        self._logged: dict[str, float] = {}
        # the requests gathered into the commit whose writes are ``_batch_ops`` (the group
        # commit's batch: a new one after every flush), answered together once it is durable
        self._batch_ops = None
        self._batch: list[tuple[tuple, bytes, object]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def client(self, host: str, s=None) -> RadiusClient | None:
        """The configured NAS client ``host`` is (longest prefix), cached per settings ``s``."""
        s = s if s is not None else self.settings()
        if s is not self._clients_of:
            self._clients, self._clients_of = {}, s
        if host not in self._clients:
            if len(self._clients) > 10_000:
                self._clients.clear()
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            if ip.version == 6 and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            best = [c for c in s.clients if ip.version == c.prefix.version and ip in c.prefix]
            self._clients[host] = max(best, key=lambda c: c.prefix.prefixlen) if best else None
        return self._clients[host]

    def datagram_received(self, data: bytes, addr) -> None:
        """From an asyncio transport: ``addr`` is (host, port, ...)."""
        self.on_datagram(data, addr[0], addr)

    def on_datagram(self, data: bytes, host: str, addr, t0: float | None = None) -> None:
        """From :class:`BatchedUdp` (``addr``: the peer's raw sockaddr, handed back to sendto)
        or from :meth:`datagram_received` (``addr``: the tuple)."""
        try:
            self._received(data, host, addr)
        except Exception as exc:      # a bug must not stop the listener: count, log, go on
            self.counts[("unknown", "error")] += 1
            log.exception("radius accounting: request from %s failed: %s", host, exc)

    def _received(self, data: bytes, host: str, addr) -> None:
        s = self.settings()
        client = self.client(host, s)
        if client is None:
            return self._drop("unknown", "unknown-client", f"request from {host}, not a configured NAS client")
        key = (addr, data[1:2], data[4:20])     # addr: the client's address and port
        cached = self.replies.get(key)
        if cached is not None:
            self.counts[("unknown", "duplicate")] += 1
            if cached is not _PENDING:
                self.transport.sendto(cached, addr)
            return
        if self.commit.full():
            return self._drop("unknown", "overload", "too many requests waiting for the store")
        try:
            pkt = self.decoder.decode(data, client.secret)
            attrs = radius.attributes(pkt, framed_int=True)
            req = radius.interpret(pkt, attrs, radius.nas_name(attrs, client.id, host), self.clock(),
                                   s.interim_interval, s.customer_from, self.replier)
        except radius.Rejected as exc:
            return self._drop("unknown", exc.why, f"from {client.id} ({host}): {exc}")
        ops = self.book.apply(req.event, self.commit.ops)      # into the next commit's batch
        self.replies[key] = _PENDING
        self.counts[(req.status, "ok")] += 1
        if ops is not self._batch_ops:       # the first request of this commit: one callback answers all
            self._batch_ops, self._batch = ops, []
            self.commit.when_durable(partial(self._answer, self._batch))
        self._batch.append((key, req.reply, addr))
        self.commit.submit(ops)

    def _answer(self, batch: list[tuple[tuple, bytes, object]]) -> None:
        """The requests of one commit are durable: remember and send their answers."""
        replies = self.replies
        for key, reply, _ in batch:
            replies[key] = reply
        while len(replies) > REPLY_CACHE:
            replies.popitem(last=False)
        if self.transport is not None and not self.transport.is_closing():
            sendto = self.transport.sendto
            for _, reply, addr in batch:
                sendto(reply, addr)

    def forget_pending(self) -> None:
        """After a failed commit: retransmissions must be processed again."""
        for k in [k for k, v in self.replies.items() if v is _PENDING]:
            del self.replies[k]

    def _drop(self, status: str, why: str, message: str) -> None:
        self.counts[(status, why)] += 1
        now = monotonic()
        if now - self._logged.get(why, -LOG_EVERY) >= LOG_EVERY:
            self._logged[why] = now
            log.warning("radius accounting: dropped (%s): %s", why, message)


RCVBUF = 8 * 1024 * 1024     # a NAS reboot replays thousands of requests at once
# datagrams per recvmmsg: BatchedUdp reads up to 8 such batches before the loop runs anything
# else, and the group commit's timer must get its turn while a burst is read (a commit
# under way while later requests are decoded keeps the pipeline full)
READ_BATCH = 8


async def listen(protocol: AccountingProtocol, host: str, port: int):
    """Bind the listener: batched reads and sends (recvmmsg/sendmmsg, ``dns/mmsg.py``) where
    they work, else an asyncio datagram transport."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)   # capped by net.core.rmem_max
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    if mmsg.available():
        # a datagram longer than MAX_PACKET arrives cut to MAX_PACKET + 1 bytes: still "oversized"
        transport = mmsg.BatchedUdp(loop, sock, protocol.on_datagram, rx_slot=radius.MAX_PACKET + 1,
                                    tx_slot=radius.MAX_PACKET, batch=READ_BATCH)
        protocol.connection_made(transport)
        return transport
    transport, _ = await loop.create_datagram_endpoint(lambda: protocol, sock=sock)
    return transport
