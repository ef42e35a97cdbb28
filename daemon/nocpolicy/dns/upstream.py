"""Forwarding to upstream resolvers over UDP, with TCP fallback, retries and health.

One connected UDP socket per upstream. Each forwarded query gets a fresh random
ID unique among that upstream's pending queries; the answer is matched by ID
*and* question bytes, so a stray or spoofed datagram is ignored. Pending
queries live in insertion-ordered dicts: a sweeper every 50 ms expires the
oldest ones (no timer per query); it sleeps while nothing is pending (an idle daemon
does not wake 20 times a second for it). A query that times out, or whose upstream
reports an error (ICMP port unreachable), is retried on the next upstream in
policy order; when every upstream has failed the caller gets ``None`` and an
EDE code (22 No Reachable Authority after timeouts, 23 Network Error after
errors). An upstream with 3 consecutive failures is "down" for 5 s (tried last).

Answers with TC set are re-asked over TCP when the client itself came over TCP (at most
TCP_FALLBACK_MAX at once; past that the client gets the truncated answer);
a UDP client gets the truncated answer and retries over TCP, as RFC 7766 wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable

from .mmsg import BatchedUdp, BatchGroup

log = logging.getLogger(__name__)

SWEEP = 0.05
DOWN_AFTER = 3
DOWN_FOR = 5.0
MAX_PENDING = 50_000
TCP_FALLBACK_MAX = 64       # upstream TCP re-asks at once (unbound: outgoing-num-tcp 10 per thread)
_rand16 = random.getrandbits

# on_reply(pending, answer bytes (upstream's ID) or None, EDE code when None)
Reply = Callable[["Pending", bytes | None, int], None]


class Pending:
    """One forwarded query and what is needed to answer its client."""

    __slots__ = ("data", "qend", "q", "host", "addr", "sub", "send", "tcp", "t0", "deadline", "tried",
                 "err")

    def __init__(self, data, q, host, addr, sub, send, tcp, t0):
        # one statement per attribute: cheaper than tuple assignment on this path
        self.data = data
        self.q = q
        self.qend = q.qend
        self.host = host
        self.addr = addr
        self.sub = sub
        self.send = send
        self.tcp = tcp
        self.t0 = t0
        self.deadline = 0.0
        self.tried = 0          # bit i set: upstream i was tried
        self.err = 22


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, pool: UpstreamPool, index: int, conf):
        self.pool, self.index, self.conf = pool, index, conf
        self.id = conf.id
        self.host, self.port = conf.address
        self.timeout = conf.timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, Pending] = {}
        self.fails = 0
        self.down_until = 0.0
        self.last_error: str | None = None
        self.ok = 0                 # answers received (plain int; drained into the stats)
        self.on_reply = pool.on_reply
        self._send = None           # transport.sendto, bound once
        self._time = time.monotonic  # the loop's clock (uvloop: cached per loop iteration)

    # -- protocol --------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._send = transport.sendto
        self._time = asyncio.get_running_loop().time

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, None, addr, 0.0)

    def on_datagram(self, data: bytes, host, addr, t0: float) -> None:
        if len(data) < 12:
            return
        qid = (data[0] << 8) | data[1]
        p = self.pending.pop(qid, None)
        if p is None:
            return
        if not data.startswith(p.data[12:p.qend], 12):
            self.pending[qid] = p    # not the answer to our question: keep waiting
            return
        if self.fails:
            self.fails = 0
            self.down_until = 0.0
        if p.tcp and data[2] & 0x02:
            self.pool.stats.upstream_result(self.id, "truncated")
            self.pool.spawn_tcp(self, p, data)
            return
        self.ok += 1
        self.on_reply(p, data, 0)

    def error_received(self, exc: Exception) -> None:
        # A connected UDP socket reports ICMP errors here, without saying which query.
        self.last_error = str(exc)
        self._failed("error")
        stuck, self.pending = self.pending, {}
        for p in stuck.values():
            p.err = 23
            self.pool.retry(p, self)

    def connection_lost(self, exc) -> None:
        self.transport = None

    # -- helpers ---------------------------------------------------------------

    def _failed(self, result: str) -> None:
        self.pool.stats.upstream_result(self.id, result)
        self.fails += 1
        if self.fails >= DOWN_AFTER:
            self.pool.any_down = True
            self.pool.primary = None
            if not self.down_until:
                log.warning("upstream %s (%s:%d) is down: %s", self.id, self.host, self.port,
                            self.last_error or result)
            self.down_until = time.monotonic() + DOWN_FOR

    def send(self, p: Pending) -> bool:
        pend = self.pending
        if len(pend) >= MAX_PENDING or self.transport is None:
            return False
        if not pend:
            self.pool.sweep_needed.set()
        qid = _rand16(16)
        while qid in pend:
            qid = _rand16(16)
        p.deadline = self._time() + self.timeout
        pend[qid] = p
        self._send(qid.to_bytes(2) + p.data[2:])
        return True

    def status(self) -> dict:
        return {"id": self.id, "address": f"{self.host}:{self.port}", "up": not self.down_until
                or self.down_until < time.monotonic(), "consecutive_failures": self.fails,
                "pending": len(self.pending), "last_error": self.last_error}


class UpstreamPool:
    def __init__(self, confs, stats, on_reply: Reply):
        self.confs = tuple(confs)
        self.stats = stats
        self.on_reply = on_reply
        self.any_down = False
        self.primary: Upstream | None = None     # the first upstream while none is down
        self.sweep_needed = asyncio.Event()      # a query is pending: the sweeper runs
        self.upstreams: list[Upstream] = []
        self._tasks: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None

    async def open(self, batched: BatchGroup | None = None) -> None:
        """Open a socket to each upstream: batched (into that group) or asyncio's."""
        loop = asyncio.get_running_loop()
        for i, conf in enumerate(self.confs):
            u = Upstream(self, i, conf)
            host, port = conf.address
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                sock = _connected_socket(fam, host, port)
                if batched is not None:
                    # answers may be as long as the client's EDNS size (up to 64 KiB): large slots
                    u.connection_made(BatchedUdp(loop, sock, u.on_datagram, on_error=u.error_received,
                                                 group=batched, rx_slot=65536))
                else:
                    await loop.create_datagram_endpoint(lambda u=u: u, sock=sock)
            except OSError as exc:   # e.g. no IPv6 on this host: the upstream stays unusable
                u.last_error = f"cannot open a socket: {exc.strerror or exc}"
                log.warning("upstream %s: %s", conf.id, u.last_error)
            self.upstreams.append(u)
        self.primary = self.upstreams[0] if self.upstreams else None
        self._sweeper = loop.create_task(self._sweep(), name="dns:upstream-sweeper")

    async def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for t in list(self._tasks):
            t.cancel()
        for u in self.upstreams:
            if u.transport:
                u.transport.close()
            for p in u.pending.values():
                self.on_reply(p, None, 23)
            u.pending.clear()
        self.drain()

    def drain(self) -> None:
        for u in self.upstreams:
            if u.ok:
                self.stats.upstream_result(u.id, "ok", u.ok)
                u.ok = 0

    def status(self) -> list[dict]:
        return [u.status() for u in self.upstreams]

    # -- forwarding ------------------------------------------------------------

    def _order(self) -> list[Upstream]:
        ups = self.upstreams
        if not self.any_down:
            return ups
        now = time.monotonic()
        healthy = [u for u in ups if u.down_until < now and u.transport is not None]
        if len(healthy) == len(ups):
            self.any_down = False
            self.primary = ups[0]
            return ups
        return healthy + [u for u in ups if u not in healthy and u.transport is not None]

    def forward(self, p: Pending) -> None:
        """Send to the first upstream in health order this query has not tried yet."""
        order = self._order() if self.any_down else self.upstreams
        for u in order:
            bit = 1 << u.index
            if not p.tried & bit:
                p.tried |= bit
                if u.send(p):
                    return
        self.on_reply(p, None, p.err)

    _next = forward

    def retry(self, p: Pending, failed: Upstream) -> None:
        if p.tried != (1 << len(self.upstreams)) - 1:
            self.stats.upstream_result(failed.id, "retry")
        self._next(p)

    async def _sweep(self) -> None:
        while True:
            if not any(u.pending for u in self.upstreams):
                self.sweep_needed.clear()
                await self.sweep_needed.wait()       # set by the next send to an empty table
            await asyncio.sleep(SWEEP)
            now = asyncio.get_running_loop().time()
            for u in self.upstreams:
                pend = u.pending
                expired = []
                for qid, p in pend.items():
                    if p.deadline > now:
                        break
                    expired.append(qid)
                for qid in expired:
                    p = pend.pop(qid)
                    u.last_error = f"no answer within {u.timeout:g}s"
                    u._failed("timeout")
                    self.retry(p, u)

    # -- TCP -------------------------------------------------------------------

    def spawn_tcp(self, u: Upstream, p: Pending, truncated: bytes = b"") -> None:
        if len(self._tasks) >= TCP_FALLBACK_MAX:
            # as many re-asks in flight as we allow: the TCP client gets the truncated answer
            lim = self.stats.limits
            lim["tcp_fallback_cap"] = lim.get("tcp_fallback_cap", 0) + 1
            self.on_reply(p, truncated or None, 22)
            return
        t = asyncio.get_running_loop().create_task(self._tcp(u, p), name=f"dns:tcp-fallback:{u.id}")
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _tcp(self, u: Upstream, p: Pending) -> None:
        try:
            resp = await asyncio.wait_for(tcp_query(u.host, u.port, p.data), u.timeout)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            u.last_error = f"TCP: {exc or type(exc).__name__}"
            u._failed("tcp_error")
            p.err = 22 if isinstance(exc, TimeoutError) else 23
            self.retry(p, u)
            return
        self.stats.upstream_result(u.id, "tcp_ok")
        self.on_reply(p, resp, 0)


def _connected_socket(fam: int, host: str, port: int) -> socket.socket:
    """A UDP socket connected to one upstream (ICMP errors come back to it), 4 MB of buffer."""
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def tcp_query(host: str, port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(len(data).to_bytes(2, "big") + data)
        await writer.drain()
        n = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(n)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

