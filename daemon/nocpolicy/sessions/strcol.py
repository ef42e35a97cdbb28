"""A column of short strings for the live session table: up to 24 UTF-8 bytes in three
64-bit array columns and a length byte (25 bytes a string, where a str object and its
list slot take ~64); a longer string is kept as it is in a dict."""

from __future__ import annotations

import struct
from array import array

WIDTH = 24
_LONG = 0xFF
_WORDS = struct.Struct("<3Q").unpack


class ShortStrings:
    __slots__ = ("_w0", "_w1", "_w2", "_len", "_long")

    def __init__(self):
        self._w0, self._w1, self._w2 = array("Q"), array("Q"), array("Q")
        self._len = array("B")
        self._long: dict[int, str | bytes] = {}

    def __len__(self) -> int:
        return len(self._len)

    def append(self, s: str) -> None:
        b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else None
        if b is None or len(b) > WIDTH:
            for col in (self._w0, self._w1, self._w2, self._len):
                col.append(0)
            self[len(self._len) - 1] = s
            return
        w0, w1, w2 = _WORDS(b.ljust(WIDTH, b"\0"))
        self._w0.append(w0)
        self._w1.append(w1)
        self._w2.append(w2)
        self._len.append(len(b))

    def __setitem__(self, i: int, s: str) -> None:
        # not a str (pyrad hands over the raw bytes of a string attribute that is not
        # UTF-8): kept as it is, like a long one
        b = s.encode("utf-8", "surrogatepass") if isinstance(s, str) else None
        if b is None or len(b) > WIDTH:
            self._long[i] = s
            self._len[i] = _LONG
            return
        if self._long:
            self._long.pop(i, None)
        self._len[i] = len(b)
        self._w0[i], self._w1[i], self._w2[i] = _WORDS(b.ljust(WIDTH, b"\0"))

    def __getitem__(self, i: int) -> str:
        n = self._len[i]
        if n == _LONG:
            return self._long[i]
        b = (self._w0[i].to_bytes(8, "little") + self._w1[i].to_bytes(8, "little")
             + self._w2[i].to_bytes(8, "little"))
        return b[:n].decode("utf-8", "surrogatepass")

    def drop(self, i: int) -> None:
        """Forget entry ``i`` (a freed slot)."""
        self._len[i] = 0
        if self._long:
            self._long.pop(i, None)
