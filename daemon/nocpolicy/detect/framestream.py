"""Frame Streams (https://farsightsec.github.io/fstrm/) as a sans-IO state machine.

A frame is a 32-bit big-endian length and that many bytes. Length 0 escapes a
control frame: 32-bit control length, 32-bit control type, then fields
(32-bit type 1 = CONTENT_TYPE, 32-bit length, bytes). The bidirectional
handshake a resolver (unbound, BIND, Knot Resolver) performs on a unix socket::

    sender  -> READY (content types)     receiver -> ACCEPT (the type it takes)
    sender  -> START (content type)      sender   -> data frames ...
    sender  -> STOP                      receiver -> FINISH

:class:`Receiver` takes bytes with :meth:`feed` and returns what to write back
and the data frames received; it never touches a socket.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ACCEPT, START, STOP, READY, FINISH = 1, 2, 3, 4, 5
CONTROL_NAMES = {ACCEPT: "ACCEPT", START: "START", STOP: "STOP", READY: "READY", FINISH: "FINISH"}
FIELD_CONTENT_TYPE = 1
MAX_CONTROL = 512          # fstrm's limit for control frames
MAX_FRAME = 1 << 20        # a dnstap message is a few hundred bytes; 1 MiB is generous


class FrameError(ValueError):
    """The peer broke the Frame Streams protocol; the connection should be closed."""


def control(ctype: int, content_types: tuple[bytes, ...] = ()) -> bytes:
    body = struct.pack(">I", ctype)
    for ct in content_types:
        body += struct.pack(">II", FIELD_CONTENT_TYPE, len(ct)) + ct
    return struct.pack(">II", 0, len(body)) + body


def data(payload: bytes) -> bytes:
    if not payload:
        raise ValueError("a data frame cannot be empty")
    return struct.pack(">I", len(payload)) + payload


def parse_control(body: bytes) -> tuple[int, list[bytes]]:
    if len(body) < 4:
        raise FrameError("control frame shorter than its type")
    (ctype,) = struct.unpack_from(">I", body)
    types, pos = [], 4
    while pos < len(body):
        if pos + 8 > len(body):
            raise FrameError("truncated control field")
        ftype, flen = struct.unpack_from(">II", body, pos)
        pos += 8
        if pos + flen > len(body):
            raise FrameError("control field runs past the frame")
        if ftype == FIELD_CONTENT_TYPE:
            types.append(bytes(body[pos:pos + flen]))
        pos += flen
    return ctype, types


@dataclass
class Output:
    reply: bytes = b""                      # bytes to write back to the sender
    frames: list[bytes] = field(default_factory=list)
    finished: bool = False                  # STOP received (FINISH queued in reply): close after writing


class Receiver:
    """The receiving end of one bidirectional Frame Streams connection."""

    def __init__(self, content_type: bytes, *, bidirectional: bool = True):
        self.content_type = content_type
        self.state = "wait-ready" if bidirectional else "wait-start"
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> Output:
        self._buf += chunk
        out = Output()
        buf = self._buf
        pos = 0
        while self.state != "stopped":
            if len(buf) - pos < 4:
                break
            (length,) = struct.unpack_from(">I", buf, pos)
            if length == 0:
                if len(buf) - pos < 8:
                    break
                (clen,) = struct.unpack_from(">I", buf, pos + 4)
                if clen > MAX_CONTROL:
                    raise FrameError(f"control frame of {clen} bytes (limit {MAX_CONTROL})")
                if len(buf) - pos < 8 + clen:
                    break
                self._control(bytes(buf[pos + 8:pos + 8 + clen]), out)
                pos += 8 + clen
            else:
                if length > MAX_FRAME:
                    raise FrameError(f"data frame of {length} bytes (limit {MAX_FRAME})")
                if len(buf) - pos < 4 + length:
                    break
                if self.state != "data":
                    raise FrameError(f"data frame before START (state {self.state})")
                out.frames.append(bytes(buf[pos + 4:pos + 4 + length]))
                pos += 4 + length
        del buf[:pos]
        return out

    def _control(self, body: bytes, out: Output) -> None:
        ctype, types = parse_control(body)
        name = CONTROL_NAMES.get(ctype, str(ctype))
        if ctype == READY and self.state == "wait-ready":
            if self.content_type not in types and types:
                raise FrameError(f"sender offers {[t.decode(errors='replace') for t in types]}, "
                                 f"not {self.content_type.decode()}")
            out.reply += control(ACCEPT, (self.content_type,))
            self.state = "wait-start"
        elif ctype == START and self.state == "wait-start":
            if types and types[0] != self.content_type:
                raise FrameError(f"START with content type {types[0].decode(errors='replace')}")
            self.state = "data"
        elif ctype == STOP and self.state == "data":
            out.reply += control(FINISH)
            out.finished = True
            self.state = "stopped"
        else:
            raise FrameError(f"unexpected {name} control frame in state {self.state}")
