"""A compact int -> int map for the live session table: open addressing with linear
probing in two ``array``s (keys 64-bit, values 32-bit), backward-shift deletion (no
tombstones). About 12 bytes a slot at most 60% full (~20-40 bytes an entry), where a
dict of int keys and int values costs ~100-140 bytes an entry (the two int objects and
the entry). Keys must be 0 <= key < 2**64, values 0 <= value < 2**31.

``IntMap`` is the C type of ``_intmap.c`` (the same layout and rules, the probes out of the
interpreter: issue 15) when the optional extension is built, else this module's ``PyIntMap``.
"""

from __future__ import annotations

from array import array

_GOLDEN = 0x9E3779B97F4A7C15          # Fibonacci hashing: spreads sequential keys
_M64 = (1 << 64) - 1
_EMPTY = -1
MAX_LOAD = 0.6


class PyIntMap:
    __slots__ = ("_keys", "_vals", "_bits", "_mask", "_n", "_kind", "_limit", "_shift")

    def __init__(self, capacity: int = 8, *, wide: bool = True):
        self._kind = "Q" if wide else "I"        # narrow: keys < 2**32 (IPv4), 8 bytes a slot
        self._alloc(self._bits_for(capacity))

    @staticmethod
    def _bits_for(capacity: int) -> int:
        bits = 3
        while (1 << bits) * MAX_LOAD < capacity:
            bits += 1
        return bits

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` entries without growing (one allocation, not a doubling
        series: a bulk load leaves no freed arrays behind)."""
        bits = self._bits_for(capacity)
        if bits > self._bits:
            self._rehash(bits)

    def _alloc(self, bits: int) -> None:
        size = 1 << bits
        self._bits, self._mask, self._n = bits, size - 1, 0
        self._shift = 64 - bits
        self._limit = int(size * MAX_LOAD)       # grow before the entry that would pass it
        self._keys = array(self._kind, bytes(array(self._kind).itemsize * size))
        self._vals = array("i", [_EMPTY]) * size

    def __len__(self) -> int:
        return self._n

    def _home(self, key: int) -> int:
        return ((key * _GOLDEN) & _M64) >> self._shift

    def get(self, key: int, default=None):
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((key * _GOLDEN) & _M64) >> self._shift
        while True:
            v = vals[i]
            if v == _EMPTY:
                return default
            if keys[i] == key:
                return v
            i = (i + 1) & mask

    def __contains__(self, key: int) -> bool:
        return self.get(key) is not None

    def __setitem__(self, key: int, value: int) -> None:
        if self._n >= self._limit:          # (n + 1 > size * MAX_LOAD, n and the limit integers)
            self._grow()
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((key * _GOLDEN) & _M64) >> self._shift
        while vals[i] != _EMPTY and keys[i] != key:
            i = (i + 1) & mask
        if vals[i] == _EMPTY:
            keys[i] = key               # (raises on a bad key or value before the count moves)
            vals[i] = value
            self._n += 1
        else:
            vals[i] = value

    def add(self, key: int, value: int) -> int | None:
        """Map ``key`` to ``value`` unless it is mapped already; returns the value it had
        (None: added). One probe where ``get`` then ``[key] =`` take two."""
        if self._n >= self._limit:          # (n + 1 > size * MAX_LOAD, n and the limit integers)
            self._grow()
        keys, vals, mask = self._keys, self._vals, self._mask
        i = ((key * _GOLDEN) & _M64) >> self._shift
        while True:
            v = vals[i]
            if v == _EMPTY:
                keys[i], vals[i] = key, value
                self._n += 1
                return None
            if keys[i] == key:
                return v
            i = (i + 1) & mask

    def pop(self, key: int, default=None):
        keys, vals, mask = self._keys, self._vals, self._mask
        i = self._home(key)
        while True:
            v = vals[i]
            if v == _EMPTY:
                return default
            if keys[i] == key:
                break
            i = (i + 1) & mask
        self._n -= 1
        j = i
        while True:                     # shift back the entries that probed past slot i
            j = (j + 1) & mask
            if vals[j] == _EMPTY:
                break
            h = self._home(keys[j])
            if (i < j and i < h <= j) or (i > j and (h > i or h <= j)):
                continue                # its home lies between i and j: it stays
            keys[i], vals[i] = keys[j], vals[j]
            i = j
        vals[i] = _EMPTY
        return v

    def _grow(self) -> None:
        self._rehash(self._bits + 1)

    def _rehash(self, bits: int) -> None:
        """Into arrays of ``2**bits`` slots. The probe is inlined (keys are distinct and the new
        arrays have room): ``self[k] = v`` per entry, with its load check and key compare, was
        2.5 % of the accounting listener's time as the table doubled during ingest."""
        keys, vals = self._keys, self._vals
        self._alloc(bits)
        nk, nv, mask, shift = self._keys, self._vals, self._mask, self._shift
        n = 0
        for k, v in zip(keys, vals, strict=True):
            if v != _EMPTY:
                i = ((k * _GOLDEN) & _M64) >> shift
                while nv[i] != _EMPTY:
                    i = (i + 1) & mask
                nk[i], nv[i] = k, v
                n += 1
        self._n = n

    def items(self):
        return [(k, v) for k, v in zip(self._keys, self._vals, strict=True) if v != _EMPTY]


try:                                    # the same map in C (setup.py builds it when it can)
    from ._intmap import IntMap
    IMPLEMENTATION = "C (sessions/_intmap.c)"
except ImportError:                     # no compiler at install time: the Python one
    IntMap = PyIntMap
    IMPLEMENTATION = "Python (the C extension nocpolicy.sessions._intmap is not built)"
