"""DNS over TCP (RFC 7766) from clients, with the limits a hostile client meets.

Several queries per connection, 2-byte length framing, answered as they are ready (possibly
out of order). Limits (``dns.tcp`` in the policy; defaults in policy/dnsguard.py):

* ``max_connections`` in all and ``per_ip`` from one address: a connection over either is
  closed at once (counted);
* ``in_flight``: queries of one connection waiting for their answer; at the cap the
  connection stops being read until an answer goes out;
* the write buffer: past :data:`WRITE_HIGH` bytes not yet taken by the client the connection
  stops being read (a client that pipelines queries and never reads costs at most that);
* ``idle``: a connection with no whole message (query in, answer out) for that long is
  closed. Bytes that do not complete a message do not count, so one byte at a time does not
  keep a connection open.
"""

from __future__ import annotations

import asyncio
import time

WRITE_HIGH = 64 * 1024
WRITE_LOW = 16 * 1024
_WRITE, _INFLIGHT = 1, 2


def _count(stats, kind: str) -> None:
    lim = stats.limits
    lim[kind] = lim.get(kind, 0) + 1


class TcpConnection(asyncio.Protocol):
    def __init__(self, engine, server):
        self.engine, self.server = engine, server
        self.conf = engine.tcp_conf
        self.buf = bytearray()
        self.transport = None
        self.peer = None
        self.ip = None             # set once the connection is admitted
        self.in_flight = 0
        self.paused = 0            # _WRITE | _INFLIGHT
        self._scheduled = False
        self._idle = None
        self.last = 0.0            # loop time of the last whole message

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server, conf = self.server, self.conf
        ip = self.peer[0] if self.peer else ""
        per_ip = server.tcp_per_ip
        if len(server.tcp_conns) >= conf.max_connections:
            _count(self.engine.stats, "tcp_max_connections")
            transport.close()
            return
        if per_ip.get(ip, 0) >= conf.per_ip:
            _count(self.engine.stats, "tcp_per_ip")
            transport.close()
            return
        self.ip = ip
        per_ip[ip] = per_ip.get(ip, 0) + 1
        server.tcp_conns.add(self)
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        loop = asyncio.get_running_loop()
        self.last = loop.time()
        self._idle = loop.call_later(conf.idle, self._timeout)

    def _timeout(self) -> None:
        t = self.transport
        if t is None:
            return
        loop = asyncio.get_running_loop()
        left = self.last + self.conf.idle - loop.time()
        if left > 0.01:
            self._idle = loop.call_later(left, self._timeout)
        else:
            t.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._process()

    def _process(self) -> None:
        self._scheduled = False
        buf, engine, cap = self.buf, self.engine, self.conf.in_flight
        while len(buf) >= 2 and not self.paused and self.transport is not None:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2:2 + n])
            del buf[:2 + n]
            engine.stats.queries["tcp"] += 1
            if n < 12:
                engine.stats.malformed += 1
                self.transport.close()
                return
            self.last = asyncio.get_running_loop().time()
            self.in_flight += 1
            if self.in_flight >= cap:
                self._pause(_INFLIGHT)
            try:
                engine.handle(msg, self.peer[0], self.peer, self.send, True, time.perf_counter())
            except Exception as exc:
                engine.failed(exc)

    def send(self, resp: bytes, addr=None) -> None:
        if self.in_flight:
            self.in_flight -= 1
        t = self.transport
        if t is not None and not t.is_closing():
            self.last = asyncio.get_running_loop().time()
            t.write(len(resp).to_bytes(2, "big") + resp)
        if self.paused & _INFLIGHT and self.in_flight < self.conf.in_flight:
            self._resume(_INFLIGHT)

    def _pause(self, why: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
            _count(self.engine.stats, "tcp_paused_write" if why == _WRITE else "tcp_paused_in_flight")
        self.paused |= why

    def _resume(self, why: int) -> None:
        self.paused &= ~why
        t = self.transport
        if not self.paused and t is not None and not t.is_closing():
            t.resume_reading()
            if self.buf and not self._scheduled:        # messages read before the pause
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._process)

    def pause_writing(self) -> None:          # the transport's write buffer passed WRITE_HIGH
        self._pause(_WRITE)

    def resume_writing(self) -> None:         # ... and drained below WRITE_LOW
        self._resume(_WRITE)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self._idle is not None:
            self._idle.cancel()
        if self.ip is not None:
            per_ip = self.server.tcp_per_ip
            n = per_ip.get(self.ip, 0)
            if n > 1:
                per_ip[self.ip] = n - 1
            else:
                per_ip.pop(self.ip, None)
            self.server.tcp_conns.discard(self)
