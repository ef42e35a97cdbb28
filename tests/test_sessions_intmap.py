"""IntMap, the live session table's int -> int index (issue 15): the C type of
sessions/_intmap.c and the Python PyIntMap are the same map -- same answers, same slot for
every entry (so the same items() order), same growth -- at the edges of the key range, across
many doublings, when a deletion wraps around the end of the array, after a reserve; the C one
frees what it allocates; and the C build is the one in use where this repository is installed.
"""

from __future__ import annotations

import gc
import os
import random
import tracemalloc

import pytest

from intmap_impls import INTMAPS
from nocpolicy.sessions import intmap as intmap_mod
from nocpolicy.sessions.intmap import IntMap, PyIntMap

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def test_the_c_build_is_the_one_in_use():
    """``pip install -e .`` builds the extension here (gcc and the headers are installed);
    NOCPOLICY_C_OPTIONAL=1 says a machine without a compiler, where the fallback is expected."""
    if os.environ.get("NOCPOLICY_C_OPTIONAL") == "1":
        pytest.skip("NOCPOLICY_C_OPTIONAL=1: the C extensions may be missing")
    assert IntMap is not PyIntMap, "nocpolicy.sessions._intmap is not built: run pip install -e ."
    assert IntMap.__module__ == "nocpolicy.sessions._intmap"
    assert intmap_mod.IntMap is IntMap


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_keys_at_the_edges_of_the_range(IntMap):
    wide = IntMap()
    for k, v in [(0, 0), (M64, (1 << 31) - 1), (1 << 63, 5)]:
        assert wide.add(k, v) is None and wide.get(k) == v and k in wide
    assert wide.add(M64, 1) == (1 << 31) - 1 and len(wide) == 3
    narrow = IntMap(wide=False)
    narrow[(1 << 32) - 1] = 9
    narrow[0] = 8
    assert narrow.get((1 << 32) - 1) == 9 and narrow.get(0) == 8 and len(narrow) == 2
    # looking up a key outside the range finds nothing; storing one raises and changes nothing
    for m, big in [(wide, 1 << 64), (narrow, 1 << 32)]:
        before = sorted(m.items())
        assert m.get(big) is None and m.get(-1, "d") == "d" and big not in m and -1 not in m
        assert m.pop(big, "d") == "d"
        with pytest.raises(OverflowError):
            m[big] = 1
        with pytest.raises(OverflowError):
            m.add(big, 1)
        with pytest.raises(OverflowError):
            m[7] = 1 << 31                       # values are 31-bit
        assert sorted(m.items()) == before and len(m) == len(before) and 7 not in m


def _keys_with_home(size: int, slot: int, count: int) -> list[int]:
    shift = 64 - size.bit_length() + 1
    return [k for k in range(1, 100_000) if ((k * GOLDEN) & M64) >> shift == slot][:count]


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_pop_shifts_back_entries_that_wrapped_around_the_end(IntMap):
    m = IntMap(4)                                # 8 slots, holds 4
    assert m._mask == 7
    last = _keys_with_home(8, 7, 3)              # home 7: they take slots 7, 0, 1
    first = _keys_with_home(8, 0, 1)             # home 0: pushed on to slot 2
    for v, k in enumerate(last + first):
        m[k] = v
    assert m._mask == 7 and [k for k, _ in m.items()] == [last[1], last[2], first[0], last[0]]
    assert m.pop(last[0]) == 0                   # slot 7 freed: all three move back one slot
    assert [k for k, _ in m.items()] == [last[2], first[0], last[1]]
    assert [m.get(k) for k in last + first] == [None, 1, 2, 3]
    assert m.pop(last[1]) == 1 and m.pop(first[0]) == 3 and m.items() == [(last[2], 2)]
    assert m.pop(last[2]) == 2 and len(m) == 0 and m.items() == []


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_growth_across_many_doublings(IntMap):
    m, ref = IntMap(1), {}
    rnd = random.Random(3)
    keys = list(range(40_000)) + [k << 44 for k in range(20_000)] + [rnd.randrange(1 << 64) for _ in range(20_000)]
    masks = set()
    for v, k in enumerate(keys):
        assert m.add(k, v) == ref.get(k)
        ref.setdefault(k, v)
        masks.add(m._mask)
    size = m._mask + 1
    assert len(m) == len(ref) <= size * 0.6 and len(ref) > (size // 2) * 0.6    # doubling, 60 %
    assert len(masks) >= 14                      # 8 slots up to 256 Ki: every doubling on the way
    assert all(m.get(k) == v for k, v in ref.items())
    for k in keys[::3]:
        assert m.pop(k) == ref.pop(k, None)
    assert sorted(m.items()) == sorted(ref.items()) and m._mask + 1 == size   # no shrinking


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_reserve_then_fill_does_not_grow(IntMap):
    m = IntMap()
    m[5] = 1
    m.reserve(50_001)
    size = m._mask + 1
    assert size == 1 << 17 and m.get(5) == 1     # the smallest power of two with 60 % >= 50,000
    for k in range(50_000):
        m.add(k * 977, k)
    assert m._mask + 1 == size and len(m) == 50_001
    m.reserve(10)                                # never shrinks
    assert m._mask + 1 == size and m.get(977 * 49_999) == 49_999


@pytest.mark.skipif(IntMap is PyIntMap, reason="the C extension nocpolicy.sessions._intmap is not built")
def test_the_c_map_keeps_every_entry_in_the_python_maps_slot():
    """The same layout: after the same random adds, sets, pops and reserves both list their
    entries in the same order (items() walks the slots), wide and narrow."""
    rnd = random.Random(8)
    for wide in (True, False):
        c, py = IntMap(3, wide=wide), PyIntMap(3, wide=wide)
        top = (1 << 64) if wide else (1 << 32)
        pool = [rnd.randrange(top) for _ in range(3000)] + list(range(200))
        for step in range(30_000):
            k, v, r = rnd.choice(pool), rnd.randrange(1 << 31), rnd.random()
            if r < 0.4:
                assert c.add(k, v) == py.add(k, v)
            elif r < 0.6:
                c[k] = py[k] = v
            elif r < 0.9999:
                assert c.pop(k, -5) == py.pop(k, -5)
            else:
                c.reserve(step)
                py.reserve(step)
        assert c.items() == py.items() and c._mask == py._mask and len(c) == len(py)


@pytest.mark.skipif(IntMap is PyIntMap, reason="the C extension nocpolicy.sessions._intmap is not built")
def test_the_c_map_frees_what_it_allocates():
    """Create, fill (through several doublings), read, pop and drop maps many times: memory
    traced by tracemalloc (which sees PyMem allocations) comes back to where it was."""
    def churn(rounds: int) -> None:
        for r in range(rounds):
            m = IntMap(wide=bool(r & 1))
            for k in range(20_000):
                m[k * 7919] = k + 1000            # values past the small-int cache
            assert sum(m.get(k * 7919) for k in range(0, 20_000, 7)) > 0
            assert len(m.items()) == 20_000
            for k in range(0, 20_000, 2):
                m.pop(k * 7919)
            m.reserve(40_000)
            del m

    churn(2)                                      # warm-up: caches, free lists
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held = IntMap(100_000)                    # proves tracemalloc sees the arrays
        assert tracemalloc.get_traced_memory()[0] - base >= (1 << 18) * 12
        del held
        churn(30)
        gc.collect()
        leaked = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert leaked < 64 * 1024, f"{leaked} bytes not freed after 30 rounds"


@pytest.mark.skipif(IntMap is PyIntMap, reason="the C extension nocpolicy.sessions._intmap is not built")
def test_the_c_map_rejects_what_is_not_an_int():
    m = IntMap()
    m[1] = 2
    for bad in ("1", 1.0, None, b"1"):
        with pytest.raises(TypeError):
            m.get(bad)
        with pytest.raises(TypeError):
            m[bad] = 1
        with pytest.raises(TypeError):
            m.add(1, bad)
    with pytest.raises(OverflowError):
        m.add(2, -1)                              # -1 is the empty-slot mark: never a value
    with pytest.raises(TypeError):
        del m[1]
    with pytest.raises(TypeError):
        m.get()
    assert m.items() == [(1, 2)] and len(m) == 1
    assert m.__sizeof__() >= 8 * 12 and IntMap(10_000).__sizeof__() >= (1 << 15) * 12
