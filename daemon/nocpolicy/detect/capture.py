"""Live DNS capture on an interface with scapy (imported here, lazily, and nowhere else).

Scapy opens the AF_PACKET socket on the interface; a hand-written classic BPF
program (packets.bpf_program) keeps only DNS in the kernel. A thread reads
frames, turns them into observations (packets.observations: hand parsing, no
scapy dissection) and hands them to the event loop in batches.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import select
import socket
import threading
from collections.abc import Callable

from ..clock import monotonic
from ..errors import NocpolicyError
from .observation import Observation
from .packets import bpf_program, observations

log = logging.getLogger(__name__)
SO_ATTACH_FILTER = 26
BATCH = 256
FLUSH_EVERY = 0.02
RCVBUF = 16 << 20


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def attach_bpf(sock: socket.socket, port: int) -> None:
    prog = bpf_program(port)
    arr = (_SockFilter * len(prog))(*[_SockFilter(*i) for i in prog])
    fprog = _SockFprog(len(prog), arr)
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def _big_buffer(sock: socket.socket) -> None:
    """A large receive buffer absorbs bursts while the thread waits for the GIL."""
    for opt in (33, socket.SO_RCVBUF):          # SO_RCVBUFFORCE (root) first, then the capped one
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, RCVBUF)
            return
        except OSError:
            continue


class LiveCapture:
    def __init__(self, interface: str, port: int, sink: Callable[[list[Observation]], None],
                 resolver: Callable[[str], bool] = lambda a: True):
        self.interface, self.port, self.sink = interface, port, sink
        self.resolver = resolver        # is this address a resolver whose responses we believe?
        self.frames = 0
        self.observed = 0
        self.foreign = 0                # responses from an address that is not a resolver: dropped
        self.kernel_drops = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            # lazy: keep scapy off the rest of the daemon
            from scapy.arch.linux import L2ListenSocket
        except ImportError as exc:
            raise NocpolicyError("detect.capture needs scapy (pip install 'nocpolicy[capture]')") from exc
        try:
            self._sock = L2ListenSocket(iface=self.interface, promisc=False)
            attach_bpf(self._sock.ins, self.port)
            _big_buffer(self._sock.ins)
        except (OSError, ValueError) as exc:
            raise NocpolicyError(f"cannot capture on {self.interface}: {exc}") from exc
        except Exception as exc:  # scapy raises its own Scapy_Exception for unknown interfaces
            raise NocpolicyError(f"cannot capture on {self.interface}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, args=(loop,), name=f"capture-{self.interface}",
                                        daemon=True)
        self._thread.start()
        log.info("capture: DNS on %s port %d", self.interface, self.port)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self._sock.ins
        sock.setblocking(False)
        batch: list[Observation] = []
        last = stats = monotonic()
        port = self.port
        while not self._stop.is_set():
            r, _, _ = select.select([sock], [], [], 0.1)
            if r:
                while True:
                    try:
                        frame = sock.recv(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self._stop.set()
                        break
                    self.frames += 1
                    for obs in observations(frame, port):
                        if obs.response and not self.resolver(obs.server):
                            self.foreign += 1
                        else:
                            batch.append(obs)
                    if len(batch) >= BATCH:
                        break
            now = monotonic()
            if batch and (len(batch) >= BATCH or now - last >= FLUSH_EVERY):
                self.observed += len(batch)
                try:
                    loop.call_soon_threadsafe(self.sink, batch)
                except RuntimeError:       # loop closed
                    return
                batch = []
                last = now
            if now - stats >= 1.0:
                self._read_drops(sock)
                stats = now
        self._read_drops(sock)

    def _read_drops(self, sock) -> None:
        try:
            # PACKET_STATISTICS (SOL_PACKET 263, optname 6): tp_packets, tp_drops
            raw = sock.getsockopt(263, 6, 8)
            self.kernel_drops += int.from_bytes(raw[4:8], "little")
        except OSError:
            pass
