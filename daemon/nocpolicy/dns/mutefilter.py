"""Muted sources dropped by the kernel before they reach the guard's UDP socket.

A source past its rate limit and its bounded share of slipped answers is *muted* for the rest
of the one-second window (ratelimit.py). Without help from the kernel its datagrams still
cross the socket buffer the guard shares with every customer: the guard reads each one to
drop it (~1-3 us of Python per datagram, most of the guard's CPU under a 20k qps flood), and a
customer's query that arrives behind thousands of them waits until they are all read -- or is
dropped by the kernel when the guard, short of CPU for a moment, lets the buffer fill.

So a muted source's address also goes into a classic BPF socket filter (``SO_ATTACH_FILTER``,
no privilege needed, nothing outside the socket changes): the kernel drops its datagrams
before they are queued. The filter is rebuilt whole on every change (one ``setsockopt``; the
kernel swaps programs atomically) and detached at the start of each window, when every source
gets its quota back. At most ``MAX_ADDRESSES`` sources per socket are filtered; past that the
listener's user-space drop (mmsg.py) still handles them. What the filter dropped is read back
from the socket's drop counter (``SO_MEMINFO``) and counted as dropped queries: a datagram the
kernel dropped for a full buffer while the filter was attached is counted with them (the
kernel keeps one drop counter per socket; with the flood filtered the buffer rarely fills).
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import struct

log = logging.getLogger(__name__)

MAX_ADDRESSES = 64          # per socket; each costs 3 (IPv4) or 9 (IPv6) instructions
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
SKF_NET_OFF = -0x100000     # offsets from the network (IP) header
# classic BPF opcodes
_LD_W_ABS = 0x20            # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15               # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35               # BPF_JMP | BPF_JGE | BPF_K
SKF_AD_OFF, SKF_AD_RANDOM = -0x1000, 56     # ancillary load: a random u32 per packet
_RET_K = 0x06               # BPF_RET | BPF_K
ACCEPT, DROP = 0xFFFFFFFF, 0


def program(family: int, entries: dict[bytes, int]) -> list[tuple[int, int, int, int]]:
    """A cBPF program (code, jt, jf, k) for ``entries``: source address (packed, 4 or 16 bytes)
    -> how much of its traffic to accept, in 1/2**32 (0: drop everything; else each datagram
    is accepted with that probability, from the kernel's per-packet random number).
    Every other source is accepted."""
    off = 12 if family == socket.AF_INET else 8          # source address in the IPv4 / IPv6 header
    words = 1 if family == socket.AF_INET else 4
    prog: list[tuple[int, int, int, int]] = []
    for a, accept in entries.items():
        # the block's tail after a full match: DROP, or a random draw between DROP and ACCEPT
        tail = [(_RET_K, 0, 0, DROP)] if not accept else [
            (_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) & 0xFFFFFFFF),
            (_JGE_K, 0, 1, accept), (_RET_K, 0, 0, DROP), (_RET_K, 0, 0, ACCEPT)]
        for w in range(words):        # load and compare each word; a mismatch skips the block
            left = words - 1 - w
            k = struct.unpack_from("!I", a, 4 * w)[0]
            prog.append((_LD_W_ABS, 0, 0, (SKF_NET_OFF + off + 4 * w) & 0xFFFFFFFF))
            prog.append((_JEQ_K, 0, 2 * left + len(tail), k))
        prog += tail
    return prog + [(_RET_K, 0, 0, ACCEPT)]


def attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))     # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)     # the kernel copies it


def drops(sock: socket.socket) -> int:
    """The socket's drop counter (SO_MEMINFO), or -1 where it cannot be read."""
    try:
        return struct.unpack_from("9I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[SK_MEMINFO_DROPS]
    except (OSError, struct.error):
        return -1


class _Socket:
    def __init__(self, sock: socket.socket):
        self.sock, self.family = sock, sock.family
        self.entries: dict[bytes, int] = {}  # packed source -> accepted share (0: none)
        self.drops0 = -1                     # drop counter when the filter was attached

    def set(self, packed: bytes, accept: int) -> None:
        if self.entries.get(packed) == accept or (packed not in self.entries
                                                  and len(self.entries) >= MAX_ADDRESSES):
            return
        if not self.entries:
            self.drops0 = drops(self.sock)
        self.entries[packed] = accept
        attach(self.sock, program(self.family, self.entries))

    def clear(self, keep: dict[bytes, int]) -> int:
        """Replace the filter by ``keep`` (detach if empty); the datagrams dropped since the
        last call."""
        n = 0
        if self.entries:
            d1 = drops(self.sock)
            n = (d1 - self.drops0) & 0xFFFFFFFF if d1 >= 0 and self.drops0 >= 0 else 0
            self.drops0 = d1
        self.entries = dict(list(keep.items())[:MAX_ADDRESSES])
        if self.entries:
            attach(self.sock, program(self.family, self.entries))
        elif n or self.drops0 >= 0:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            self.drops0 = -1
        return n


class MuteFilter:
    """The kernel side of muting, for the listeners' UDP sockets (ratelimit.RateLimiter calls
    :meth:`mute` when it mutes a source and :meth:`clear` at each new window)."""

    def __init__(self):
        self.socks: list[_Socket] = []
        self.failed = False

    def add_socket(self, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            self.socks.append(_Socket(sock))

    def remove_all(self) -> None:
        self.socks = []

    def mute(self, host: str, accept: float = 0.0) -> None:
        """Drop ``host``'s datagrams in the kernel (``accept``: the share still let through)."""
        if self.failed or not self.socks:
            return
        got = _packed(host)
        if got is None:
            return
        try:
            for s in self.socks:
                if s.family == got[0]:
                    s.set(got[1], _share(accept))
        except OSError as exc:              # no socket filters here: the user-space drop stays
            self.failed = True
            log.warning("DNS guard: cannot attach the socket filter for muted sources (%s); "
                        "they are dropped as they are read", exc)

    def clear(self, keep: dict[str, float] | None = None) -> int:
        """A new window: every source's quota is back, except that the sources in ``keep``
        (host -> share accepted) stay sampled; returns the datagrams the filter dropped."""
        packed: dict[int, dict[bytes, int]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
        for host, accept in (keep or {}).items():
            got = _packed(host)
            if got is not None and not self.failed:
                packed[got[0]][got[1]] = _share(accept)
        n = 0
        for s in self.socks:
            try:
                n += s.clear(packed[s.family])
            except OSError:
                pass
        return n


def _packed(host: str) -> tuple[int, bytes] | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return (socket.AF_INET if ip.version == 4 else socket.AF_INET6), ip.packed


def _share(accept: float) -> int:
    """A share in [0, 1] as the filter's threshold (0 = drop all; at least 1/2**32 otherwise)."""
    return 0 if accept <= 0 else max(1, min(0xFFFFFFFF, int(accept * 2 ** 32)))
