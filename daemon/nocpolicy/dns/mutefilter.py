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
_RET_K = 0x06               # BPF_RET | BPF_K
ACCEPT, DROP = 0xFFFFFFFF, 0


def program(family: int, addresses: list[bytes]) -> list[tuple[int, int, int, int]]:
    """A cBPF program (code, jt, jf, k) that drops datagrams whose source is in ``addresses``
    (packed, 4 or 16 bytes each) and accepts everything else."""
    off = 12 if family == socket.AF_INET else 8          # source address in the IPv4 / IPv6 header
    words = 1 if family == socket.AF_INET else 4
    prog: list[tuple[int, int, int, int]] = []
    for a in addresses:               # per address: load and compare each word, then DROP;
        for w in range(words):        # a mismatch jumps past the rest of the block
            left = words - 1 - w
            k = struct.unpack_from("!I", a, 4 * w)[0]
            prog.append((_LD_W_ABS, 0, 0, (SKF_NET_OFF + off + 4 * w) & 0xFFFFFFFF))
            prog.append((_JEQ_K, 0, 2 * left + 1, k))
        prog.append((_RET_K, 0, 0, DROP))
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
        self.addresses: list[bytes] = []
        self.drops0 = -1                     # drop counter when the filter was attached

    def add(self, packed: bytes) -> bool:
        if packed in self.addresses or len(self.addresses) >= MAX_ADDRESSES:
            return False
        if not self.addresses:
            self.drops0 = drops(self.sock)
        self.addresses.append(packed)
        attach(self.sock, program(self.family, self.addresses))
        return True

    def clear(self) -> int:
        """Detach; the datagrams dropped while the filter was attached."""
        if not self.addresses:
            return 0
        self.addresses = []
        self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        d1 = drops(self.sock)
        return max(0, (d1 - self.drops0) & 0xFFFFFFFF) if d1 >= 0 and self.drops0 >= 0 else 0


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

    def mute(self, host: str) -> None:
        if self.failed or not self.socks:
            return
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        try:
            for s in self.socks:
                if s.family == fam:
                    s.add(ip.packed)
        except OSError as exc:              # no socket filters here: the user-space drop stays
            self.failed = True
            log.warning("DNS guard: cannot attach the socket filter for muted sources (%s); "
                        "they are dropped as they are read", exc)

    def clear(self) -> int:
        """Every source's quota is back: detach; returns the datagrams the filter dropped."""
        n = 0
        for s in self.socks:
            try:
                n += s.clear()
            except OSError:
                pass
        return n
