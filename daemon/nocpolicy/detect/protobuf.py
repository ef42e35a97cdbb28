"""A tiny protobuf wire-format reader (and writer, for tests and the bench sender).

Only what dnstap needs: varints (wire type 0), 64-bit (1), length-delimited (2)
and 32-bit (5) fields. Groups (3, 4) are refused. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator


class DecodeError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value): int for 0/1/5, bytes for 2."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wtype == 0:
            value, pos = read_varint(buf, pos)
        elif wtype == 2:
            size, pos = read_varint(buf, pos)
            if pos + size > end:
                raise DecodeError(f"field {number}: length {size} runs past the end")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wtype == 1:
            if pos + 8 > end:
                raise DecodeError(f"field {number}: truncated 64-bit value")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wtype == 5:
            if pos + 4 > end:
                raise DecodeError(f"field {number}: truncated 32-bit value")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wtype}")
        yield number, wtype, value


# --- writer ---------------------------------------------------------------------------

def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def field_fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + value.to_bytes(4, "little")
