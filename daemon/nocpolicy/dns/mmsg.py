"""Batched UDP I/O on Linux: ``recvmmsg(2)``/``sendmmsg(2)`` through ctypes.

asyncio's datagram transports make one ``recvfrom`` and one ``sendto`` system
call per packet, and on this path the system calls, not the DNS work, are most
of the cost (a bare uvloop echo server reaches about 0.8x unbound). Here one
readable event reads up to ``BATCH`` datagrams with one call, and everything
sent in one pass of the loop leaves with one call per socket.

:class:`BatchedUdp` is a small transport: ``sendto(data, addr)`` copies the
datagram into the next send slot; the slots go out when they are all full, at
the end of the current read batch (:class:`BatchGroup`: every socket of the
guard flushes) or, for sends from a timer or a task, on the next pass of the
loop. Received datagrams go to ``on_datagram(data, host, addr, t0)`` where
``addr`` is the peer's raw ``sockaddr`` bytes (opaque: it is only handed back
to ``sendto``), ``host`` its address as text and ``t0`` the ``perf_counter()``
time the batch was read. For a connected socket (an upstream) ``addr`` is
``None`` and errors the kernel reports (ICMP port unreachable) go to
``on_error``.

Buffers are allocated once: each slot of the receive ring holds 4 KiB plus a
little (a longer datagram arrives cut and is refused as an oversized query);
an answer longer than a send slot goes out with a plain ``sendto``.
:func:`available` says whether this works here (Linux, 64-bit, glibc with the
two calls); elsewhere the listeners use asyncio's transports.

A listener can be *accelerated* (:meth:`BatchedUdp.accelerate`): its read loop and the
engine's fast paths then run in C (``_fastudp.c``, built by setup.py when a compiler is
there), on the same Python tables; :func:`native_io` says whether that is used.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import sys
import time

from ..errors import NocpolicyError

NATIVE_HOOKS = 20            # len(engine.fast_hooks(...)): what this _fastudp build was written for

try:
    from . import _fastudp
except ImportError:          # built without a C compiler: the Python loop below does the same
    _fastudp = None
_stale = _fastudp is not None and getattr(_fastudp, "NHOOKS", None) != NATIVE_HOOKS
if _stale:                   # a build older than this code (an editable install not rebuilt)
    _fastudp = None

log = logging.getLogger(__name__)

BATCH = 64                 # datagrams per system call
HDR = 64                   # sizeof(struct mmsghdr) on LP64 Linux
NAME = 28                  # sizeof(struct sockaddr_in6), the larger of the two
MSG_DONTWAIT = 0x40
MAX_ROUNDS = 8             # read batches per readable event before yielding to the loop
HOSTS_MAX = 65536

_libc = None


def _lib():
    global _libc
    if _libc is None:
        # PyDLL: called with the GIL held. The calls never block (MSG_DONTWAIT), and releasing the
        # GIL at each one would hand it to any busy thread (a list build) for a switch interval.
        lib = ctypes.PyDLL(None, use_errno=True)
        for fn in ("recvmmsg", "sendmmsg"):
            f = getattr(lib, fn)
            f.restype = ctypes.c_int
        lib.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        lib.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        _libc = lib
    return _libc


def available() -> bool:
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    try:
        _lib()
    except (OSError, AttributeError):
        return False
    return True


def batched_io(mode: str) -> bool:
    """``--dns-io``: auto (batched where it works), native or batched (required), asyncio."""
    if mode == "asyncio":
        return False
    ok = available()
    if mode in ("batched", "native") and not ok:
        raise NocpolicyError(f"--dns-io {mode} needs Linux on a 64-bit CPU with recvmmsg/sendmmsg "
                             "in the C library; use --dns-io asyncio")
    return ok


def native_io(mode: str) -> bool:
    """Whether listeners run their loop in C: ``auto`` when the extension is built, ``native``
    (required), never with ``batched`` (the Python loop) or ``asyncio``."""
    why = ("was built for another version of this code (reinstall: pip install .)" if _stale else
           "was not built (install gcc and python3-dev, then reinstall)")
    if mode == "native" and (_fastudp is None or not available()):
        raise NocpolicyError(f"--dns-io native needs the C extension nocpolicy.dns._fastudp, which {why}; "
                             "use --dns-io batched")
    if mode == "auto" and _fastudp is None and available():
        log.log(logging.WARNING if _stale else logging.INFO,
                "the DNS guard's C loop (nocpolicy.dns._fastudp) %s: UDP is read from Python", why)
    return mode in ("auto", "native") and _fastudp is not None and available()


class _Ring:
    """``n`` mmsghdr entries, each with one iovec of ``slot`` bytes and a sockaddr buffer."""

    def __init__(self, n: int, slot: int, namelen: int, keep: int):
        self.n, self.slot = n, slot
        self.bufs = ctypes.create_string_buffer(n * slot)
        self.names = ctypes.create_string_buffer(n * NAME)
        self.iovs = ctypes.create_string_buffer(n * 16)
        self.hdrs = ctypes.create_string_buffer(n * HDR)
        b, nm, iv = ctypes.addressof(self.bufs), ctypes.addressof(self.names), ctypes.addressof(self.iovs)
        for i in range(n):
            struct.pack_into("PQ", self.iovs, i * 16, b + i * slot, slot)
            # msg_name, msg_namelen, msg_iov, msg_iovlen, msg_control, msg_controllen, msg_flags, msg_len
            struct.pack_into("PI4xPQPQi4xI4x", self.hdrs, i * HDR, nm + i * NAME if namelen else 0,
                             namelen, iv + i * 16, 1, 0, 0, 0, 0)
        self.template = bytes(self.hdrs.raw)
        self.addr = ctypes.addressof(self.hdrs)
        self.buf = memoryview(self.bufs).cast("B")
        self.name = memoryview(self.names).cast("B")
        self.hdr = memoryview(self.hdrs).cast("B")
        self.lens = memoryview(self.hdrs).cast("B").cast("I")   # msg_len: every 16th, from 14
        iovlen = memoryview(self.iovs).cast("B").cast("Q")       # iov_len: every 2nd, from 1
        # per slot: its buffer, its sockaddr (as long as the family's), its iov_len
        self.slots = [self.buf[i * slot:(i + 1) * slot] for i in range(n)]
        self.namev = [self.name[i * NAME:i * NAME + keep] for i in range(n)]
        self.iovlens = [iovlen[i * 2 + 1:i * 2 + 2] for i in range(n)]


class _Counters:
    send_drops = 0


class BatchGroup:
    """The batched sockets of one DNS guard. After each batch one of them reads, every one
    flushes what it has to send: a query read from a client leaves for the upstream at once,
    not after the whole readable event."""

    def __init__(self, loop, counters=None):
        self.loop = loop
        self.members: list[BatchedUdp] = []
        self.scheduled = False
        # where datagrams that could not be sent are counted (``.send_drops``; DnsStats)
        self.counters = counters if counters is not None else _Counters()

    def schedule(self) -> None:
        """Something was queued outside a read batch (a timer, a task): flush on the next pass."""
        self.scheduled = True
        self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        for m in self.members:
            m.flush()


class BatchedUdp:
    """A bound (listener) or connected (upstream) UDP socket, read and written in batches."""

    def __init__(self, loop, sock: socket.socket, on_datagram, *, on_error=None,
                 group: BatchGroup | None = None, rx_slot: int = 4160, tx_slot: int = 4096,
                 batch: int = BATCH):
        self.loop, self.sock = loop, sock
        self.group = group or BatchGroup(loop)
        self.fd = sock.fileno()
        self.connected = _is_connected(sock)
        self.family = sock.family
        self.on_datagram, self.on_error = on_datagram, on_error
        self.batch = batch
        if self.family == socket.AF_INET6:
            self._ip, self._namelen = slice(8, 24), 28
        else:
            self._ip, self._namelen = slice(4, 8), 16
        namelen = 0 if self.connected else self._namelen
        self.rx = _Ring(batch, rx_slot, namelen and NAME, namelen)
        self.tx = _Ring(batch, tx_slot, namelen, namelen)
        # sendto(data, addr=None) copies into the next send slot; flush() sends the slots
        self.sendto, self.flush = self._sender()
        self.hosts: dict[bytes, str] = {}
        # a listener's rate limiter fills this (ratelimit.py): address -> datagrams dropped here,
        # unread, for the rest of the current second
        self.muted: dict[str, int] = {}
        self._closed = False
        self._native = None          # _fastudp.Listener once accelerated
        self._rearm_scheduled = False
        lib = _lib()
        self._recvmmsg, self._sendmmsg = lib.recvmmsg, lib.sendmmsg
        sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)
        self.group.members.append(self)      # last: a member is whole

    # -- the transport API the engine and the upstreams use ---------------------------------

    def get_extra_info(self, name: str, default=None):
        if name == "sockname":
            return self.sock.getsockname()
        if name == "socket":
            return self.sock
        return default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._native is not None:
            self._native.close()
        self.group.members.remove(self)
        self.loop.remove_reader(self.fd)
        self.sock.close()

    def accelerate(self, hooks) -> bool:
        """Read this listener in C from now on (``hooks``: the engine's fast paths, see
        ``Engine.udp_handler``, or None for ``on_datagram`` only). False: not available."""
        if _fastudp is None or self.connected or self._closed:
            return False
        self._native = _fastudp.Listener(self.fd, self.family, self.on_datagram, self.hosts, self.muted,
                                         self._host_of, self._error, self.group, hooks, self.batch)
        self.loop.remove_reader(self.fd)
        self.loop.add_reader(self.fd, self._native.readable)
        return True

    def native_flush(self) -> None:
        """Add the counts the C loop keeps between adds to the engine's counters."""
        if self._native is not None:
            self._native.flush()

    def _host_of(self, ip: bytes) -> str:
        """The text of a source address not seen before (kept, at most HOSTS_MAX)."""
        hosts = self.hosts
        if len(hosts) >= HOSTS_MAX:
            hosts.clear()
        host = hosts[ip] = socket.inet_ntop(self.family, ip)
        return host

    # -- reading --------------------------------------------------------------------------

    def _readable(self) -> None:
        rx, n_max, fd = self.rx, self.batch, self.fd
        recvmmsg, handle = self._recvmmsg, self.on_datagram
        slots, names, hdr, lens = rx.slots, rx.namev, rx.hdr, rx.lens
        template, hosts, ipsl, muted = rx.template, self.hosts, self._ip, self.muted
        perf, group = time.perf_counter, self.group
        for _ in range(MAX_ROUNDS):
            hdr[:] = template                       # reset msg_namelen and msg_flags
            n = recvmmsg(fd, rx.addr, n_max, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0:
                    err = ctypes.get_errno()
                    if err not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                        self._error(err)
                break
            t0 = perf()
            group.scheduled = True     # the flush below covers what this batch sends
            try:
                if self.connected:
                    for slot, ln in zip(slots, lens[14:n * 16:16], strict=False):
                        handle(bytes(slot[:ln]), None, None, t0)
                else:
                    for slot, name, ln in zip(slots, names, lens[14:n * 16:16], strict=False):
                        addr = bytes(name)
                        ip = addr[ipsl]
                        host = hosts.get(ip) or self._host_of(ip)
                        m = muted.get(host)
                        if m is not None:          # over its limit this second: dropped unread
                            muted[host] = m + 1
                            continue
                        handle(bytes(slot[:ln]), host, addr, t0)
            finally:
                group.flush()
            if n < n_max or self._closed:
                break

    def _error(self, err: int) -> None:
        # uvloop (libuv) stops watching a socket once epoll reports an error on it (a connected
        # socket after an ICMP port unreachable): watch it again on the next loop pass
        if not self._rearm_scheduled:
            self._rearm_scheduled = True
            self.loop.call_soon(self._rearm)
        if self.on_error is not None:
            self.on_error(OSError(err, errno.errorcode.get(err, str(err))))

    def _rearm(self) -> None:
        self._rearm_scheduled = False
        if not self._closed:
            self.loop.remove_reader(self.fd)
            self.loop.add_reader(self.fd, self._readable if self._native is None else self._native.readable)

    # -- writing --------------------------------------------------------------------------

    def _sender(self):
        """``sendto`` and ``flush`` of this socket, sharing the count of filled send slots.

        ``sendto`` copies the datagram and its address straight into the next slot (no queue);
        the slots go out with one ``sendmmsg`` when all are full or at the next flush, which
        the group runs after every read batch (or, for a send from a timer or a task, on the
        next pass of the loop). What is sent while a flush is running waits in ``later``.
        """
        tx, n_max, group = self.tx, self.batch, self.group
        size, slots, names, iovlens = tx.slot, tx.slots, tx.namev, tx.iovlens
        connected = self.connected
        later: list = []
        k = 0
        busy = False

        def sendto(data: bytes, addr=None) -> None:
            nonlocal k
            ln = len(data)
            if ln > size or busy:
                if ln > size:
                    self._send_one(data, addr)   # rare: a long answer, sent on its own
                else:
                    later.append((data, addr))
                return
            slots[k][:ln] = data
            iovlens[k][0] = ln
            if not connected:
                names[k][:] = addr
            k += 1
            if k == n_max:
                flush()
            elif k == 1 and not group.scheduled:
                group.schedule()

        def flush() -> None:
            nonlocal k, busy
            if busy:
                return
            if self._closed:
                k = 0
                later.clear()
                return
            while k:
                count, k = k, 0
                busy = True
                try:
                    self._sendmmsg_all(count)
                finally:
                    busy = False
                if later:           # queued by an error callback during the send
                    items = later.copy()
                    later.clear()
                    for data, addr in items:
                        sendto(data, addr)

        return sendto, flush

    def _sendmmsg_all(self, count: int) -> None:
        sendmmsg, fd, base = self._sendmmsg, self.fd, self.tx.addr
        start = 0
        while start < count:
            r = sendmmsg(fd, base + start * HDR, count - start, MSG_DONTWAIT)
            if r > 0:
                start += r
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                self.group.counters.send_drops += count - start   # buffer full: UDP drops
                return
            self._error(err)                         # this message is lost; go on with the rest
            self.group.counters.send_drops += 1
            start += 1

    def _send_one(self, data: bytes, addr) -> None:
        try:
            if self.connected:
                self.sock.send(data)
            else:
                self.sock.sendto(data, _sockaddr(self.family, addr))
        except BlockingIOError:
            self.group.counters.send_drops += 1
        except OSError as exc:
            self.group.counters.send_drops += 1
            if self.on_error is not None:
                self.on_error(exc)


def _is_connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def _sockaddr(family: int, raw: bytes) -> tuple:
    """A raw sockaddr_in/sockaddr_in6 as the tuple the socket module takes."""
    port = (raw[2] << 8) | raw[3]
    if family == socket.AF_INET6:
        return (socket.inet_ntop(family, raw[8:24]), port, 0, int.from_bytes(raw[24:28], "little"))
    return (socket.inet_ntop(family, raw[4:8]), port)
