"""DNS listeners: UDP and TCP on each configured address (IPv4 and IPv6).

UDP: one socket per address, 4 MB receive buffer, read and written in batches
(mmsg.py: recvmmsg/sendmmsg) or, with ``--dns-io asyncio``, through an asyncio
DatagramProtocol. TCP (RFC 7766):
several queries per connection, answered possibly out of order, 2-byte length
framing, idle timeout, caps on connections (tcp.py). With ``reuse_port``
several worker processes share the ports (SO_REUSEPORT). Nothing on the query
path may take the server down: an unexpected error is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from ..errors import NocpolicyError
from .mmsg import BatchedUdp, BatchGroup
from .tcp import TcpConnection

RCVBUF = 4 * 1024 * 1024


class UdpListener(asyncio.DatagramProtocol):
    """The portable listener (``--dns-io asyncio``): one system call per datagram."""

    def __init__(self, engine):
        self.engine = engine
        self.transport = None
        self.on_datagram = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.on_datagram = self.engine.udp_handler(transport.sendto)

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, addr[0], addr, time.perf_counter())

    def error_received(self, exc) -> None:
        pass


class Listeners:
    def __init__(self, engine, addresses, *, reuse_port: bool = False, batched: BatchGroup | None = None,
                 native: bool = False):
        self.engine = engine
        self.native = native         # batched listeners read in C (mmsg.native_io)
        self.addresses = list(addresses)
        self.reuse_port = reuse_port
        self.batched = batched
        self.udp: list = []          # asyncio.DatagramTransport or mmsg.BatchedUdp
        self.tcp: list[asyncio.AbstractServer] = []
        self.tcp_conns: set[TcpConnection] = set()
        self.tcp_per_ip: dict[str, int] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for host, port in self.addresses:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(fam, socket.SOCK_DGRAM)
                try:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                    if self.reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if fam == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    raise
                self.engine.limiter.mute_filter.add_socket(sock)     # muted sources dropped in the kernel
                if self.batched:
                    transport = BatchedUdp(loop, sock, None, group=self.batched)
                    transport.on_datagram = self.engine.udp_handler(transport.sendto)
                    transport.muted = self.engine.limiter.muted    # sources dropped unread
                    if self.native and transport.accelerate(transport.on_datagram.fast):
                        self.engine.native_counts.append(transport.native_flush)
                else:
                    transport, _ = await loop.create_datagram_endpoint(lambda: UdpListener(self.engine),
                                                                       sock=sock)
                self.udp.append(transport)
                server = await loop.create_server(lambda: TcpConnection(self.engine, self), host, port,
                                                  family=fam, reuse_address=True,
                                                  reuse_port=self.reuse_port or None, backlog=256)
                self.tcp.append(server)
        except OSError as exc:
            await self.stop()
            raise NocpolicyError(f"DNS cannot listen on {_fmt(host, port)}: {exc.strerror or exc} "
                                 "(is another resolver running there? choose --dns-listen)") from exc

    def sockets(self) -> list[tuple[str, int]]:
        return [t.get_extra_info("sockname")[:2] for t in self.udp]

    async def stop(self) -> None:
        self.engine.limiter.mute_filter.remove_all()
        for t in self.udp:
            if getattr(t, "native_flush", None) in self.engine.native_counts:
                self.engine.native_counts.remove(t.native_flush)
            t.close()
        for s in self.tcp:
            s.close()
        for c in list(self.tcp_conns):
            if c.transport is not None:
                c.transport.close()
        for s in self.tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)
        self.udp, self.tcp = [], []


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
