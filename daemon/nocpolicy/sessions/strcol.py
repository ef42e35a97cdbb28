"""A column of short strings for the live session table: up to 24 UTF-8 bytes in a fixed
24-byte cell of one ``bytearray`` and a length byte (25 bytes a string, where a str object
and its list slot take ~64); a longer string is kept as it is in a dict."""

from __future__ import annotations

from array import array

WIDTH = 24
_LONG = 0xFF


class ShortStrings:
    __slots__ = ("_buf", "_len", "_long")

    def __init__(self):
        self._buf = bytearray()
        self._len = array("B")
        self._long: dict[int, str | bytes] = {}

    def __len__(self) -> int:
        return len(self._len)

    def extend(self, k: int) -> None:
        """``k`` more entries, each the empty string (a block of free slots)."""
        self._buf += bytes(WIDTH * k)
        self._len.frombytes(bytes(k))

    def append(self, s: str) -> None:
        self.extend(1)
        self[len(self._len) - 1] = s

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
        n = self._len[i] = len(b)
        o = i * WIDTH
        self._buf[o:o + n] = b          # the bytes past n are never read: no padding needed

    def __getitem__(self, i: int) -> str:
        n = self._len[i]
        if n == _LONG:
            return self._long[i]
        o = i * WIDTH
        return self._buf[o:o + n].decode("utf-8", "surrogatepass")

    def drop(self, i: int) -> None:
        """Forget entry ``i`` (a freed slot)."""
        self._len[i] = 0
        if self._long:
            self._long.pop(i, None)
