"""The compact live-session representation and the GC pause of bulk loads (issue 15, performance)."""

from __future__ import annotations

import gc
import threading

import pytest

from nocpolicy.errors import PolicyInvalid
from nocpolicy.gcpause import gc_paused
from nocpolicy.policy.load import load_policy
from nocpolicy.sessions.model import Live, pack_addrs, unpack_addrs
from nocpolicy.sessions.table import LiveTable


def test_packed_addresses_round_trip():
    addrs = ((4, 0xCB007107, 32), (6, (0x20010DB8 << 96) | (0x77 << 72), 56), (6, 1, 128), (4, 0, 0))
    assert unpack_addrs(pack_addrs(addrs)) == addrs
    assert unpack_addrs(pack_addrs(())) == ()
    s = Live(1, "radius", "bng1/a", "S1", "c1", addrs, 10.0, 10.0, 300.0)
    assert s.addrs == addrs and "c1" in repr(s) and s.as_dict()["addresses"][1] == "2001:db8:0:7700::/56"


def test_table_keys_by_nas_and_session_and_forgets_empty_nas():
    t = LiveTable()
    a = Live(1, "radius", "bng1/a", "S1", "c1", ((4, 1, 32),), 1.0, 1.0, 0.0)
    b = Live(2, "radius", "bng2/b", "S1", "c2", ((4, 2, 32),), 1.0, 1.0, 0.0)
    t.add(a)
    t.add(b)
    assert len(t) == 2 and t.get("bng1/a", "S1") is a and t.get("bng2/b", "S1") is b
    assert t.get("bng3/c", "S1") is None and t.by_nas("bng1/a") == [a]
    again = Live(3, "radius", "bng1/a", "S1", "c1", ((4, 3, 32),), 2.0, 2.0, 0.0)
    assert t.add(again) == [a] and len(t) == 2 and t.lookup("0.0.0.1") is None
    t.remove(again)
    t.remove(b)
    assert len(t) == 0 and t.sessions() == [] and t.by_nas("bng1/a") == []


def test_gc_pause_nests_and_restores_the_collector(tmp_path):
    assert gc.isenabled()
    with gc_paused():
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    (tmp_path / "bad.yaml").write_text("customers: 7\n")
    with pytest.raises(PolicyInvalid):
        load_policy(tmp_path)
    assert gc.isenabled()                        # a refused policy does not leave it off
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()                # off before: stays off
    finally:
        gc.enable()


def test_gc_pause_from_threads_ends_enabled():
    started, go = threading.Barrier(4), threading.Event()

    def hold():
        with gc_paused():
            started.wait(timeout=30)
            go.wait(timeout=30)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for th in threads:
        th.start()
    started.wait(timeout=30)
    assert not gc.isenabled()
    go.set()
    for th in threads:
        th.join(timeout=30)
    assert gc.isenabled()
