"""The column-backed live table (issue 15, memory): its IntMap indexes, the table against a
plain model under random starts and stops, the restore from the store, and implicit
customers that have no subscriber object until a decision names them."""

from __future__ import annotations

import ipaddress
import random

import pytest

from intmap_impls import INTMAPS
from nocpolicy.sessions import table as tmod
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.history import History
from nocpolicy.sessions.model import Event, Live, SessionInfo, net_of
from nocpolicy.sessions.table import LiveTable
from nocpolicy.store import Store
from nocpolicy.subscribers.live import ClientLookup
from nocpolicy.subscribers.model import Decision, Decisions
from nocpolicy.subscribers.prefixes import PrefixIndex
from nocpolicy.subscribers.view import SubscriberView, update_view


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_intmap_matches_a_dict_under_random_sets_and_pops(IntMap):
    rnd = random.Random(5)
    m, ref = IntMap(), {}
    # few distinct keys, some sharing their home slot (multiples of a power of two), wide ones too
    pool = [rnd.randrange(1 << 64) for _ in range(200)] + [k << 40 for k in range(200)] + list(range(100))
    for step in range(20_000):
        k = rnd.choice(pool)
        if rnd.random() < 0.55:
            v = rnd.randrange(1 << 31)
            m[k] = v
            ref[k] = v
        else:
            assert m.pop(k) == ref.pop(k, None)
        if step % 997 == 0:
            assert len(m) == len(ref)
            assert all(m.get(x) == ref.get(x) for x in pool)
    assert sorted(m.items()) == sorted(ref.items())
    assert 0 not in IntMap() and IntMap(1000).get(7, "none") == "none"
    narrow = IntMap(wide=False)                  # IPv4 keys: 32-bit slots
    for k in range(0, 1 << 32, 1 << 20):
        narrow[k] = k >> 20
    narrow.reserve(100_000)
    assert len(narrow) == 4096 and narrow.get(0xFFF00000) == 4095 and narrow.pop(1 << 20) == 1
    assert narrow.get(1 << 20) is None and len(narrow) == 4095


def _session(i: int, nas: str, sid: str, customer: str | None, addrs, implicit=False) -> Live:
    return Live(i, "radius", nas, sid, customer, tuple(addrs), float(i), float(i), 300.0, implicit)


@pytest.mark.parametrize("IntMap", INTMAPS)
def test_table_matches_a_plain_model_under_random_starts_and_stops(IntMap, monkeypatch):
    """Random starts (some reusing a key or another session's address) and stops; after each
    step every key and every address resolves as a dict-per-session model says. With either
    IntMap as the table's indexes (the C one, and the Python fallback)."""
    monkeypatch.setattr(tmod, "IntMap", IntMap)
    rnd = random.Random(11)
    t = LiveTable()
    v4 = [(4, int(ipaddress.IPv4Address("100.64.0.0")) + k, 32) for k in range(60)]
    v6 = [(6, (0x20010DB8 << 96) | (k << 72), 56) for k in range(60)]
    v128 = [(6, (0x20010DB8 << 96) | (7 << 80) | k, 128) for k in range(20)]
    model: dict[tuple[str, str], Live] = {}
    for i in range(1, 3000):
        key = (f"bng{rnd.randrange(3)}/x", f"S{rnd.randrange(80)}")
        if rnd.random() < 0.6:
            shape = rnd.choice([[v4, v6], [v4, v6, v6], [v6], [v6, v4], [v128], [v4, v4]])   # columns or not
            s = _session(i, *key, rnd.choice([f"c{rnd.randrange(50)}", None]),
                         list(dict.fromkeys(rnd.choice(x) for x in shape)), implicit=rnd.random() < 0.5)
            gone = {x.id for x in t.add(s)}
            expect = {x.id for x in model.values() if x.sid == s.sid and x.nas == s.nas
                      or set(x.addrs) & set(s.addrs)}
            assert gone == expect
            model = {k: x for k, x in model.items() if x.id not in gone}
            model[key] = s
        elif key in model:
            t.remove(model.pop(key))
        assert len(t) == len(model)
        if i % 50 == 0:
            _check(t, model, v4 + v6 + v128)
    _check(t, model, v4 + v6 + v128)


def _check(t: LiveTable, model: dict, nets) -> None:
    holder = {n: s for s in model.values() for n in s.addrs}
    for n in nets:
        host = str(ipaddress.ip_network(f"{ipaddress.ip_address(n[1])}/{n[2]}").network_address)
        want = holder.get(n)
        assert t.customer_of(host) == (want.customer if want else None)
        assert t.contains(host) == (want is not None)
    for (nas, sid), s in model.items():
        got = t.get(nas, sid)
        assert (got.id, got.customer, got.addrs, got.implicit) == (s.id, s.customer, s.addrs, s.implicit)
    assert sorted(x.id for x in t.sessions()) == sorted(x.id for x in model.values())
    assert sorted(t.addresses()) == sorted((n, s.customer) for s in model.values() if s.customer for n in s.addrs)


def test_touch_keeps_last_and_a_stale_sweep_reads_it():
    t = LiveTable()
    book = Book(t)
    info = SessionInfo("radius", "bng1/a", "S1", "c1", addrs=(net_of("203.0.113.7/32"),), interval=300.0)
    book.apply(Event("start", info, 1000.0))
    book.apply(Event("update", info, 1500.0))            # refreshes last: not stale at 1500 + 300 + 600
    assert t.get("bng1/a", "S1").last == 1500.0
    assert not book.stale(2300.0, {"radius": 600.0}) and len(t) == 1
    assert book.stale(2500.0, {"radius": 600.0}).closes == [(1800.0, "stale", 1)]
    assert len(t) == 0 and t.count_by_source() == {}


def test_restore_rows_rebuilds_the_table_and_shares_policy_customer_ids(hist):
    book = Book(LiveTable())
    book.resolve = lambda x: (x, x.startswith("u")) if x is not None else (None, False)
    for k in range(25):
        info = SessionInfo("radius", "bng1/a", f"S{k}", ("u" if k % 2 else "c") + str(k),
                           addrs=(net_of(f"10.0.0.{k}/32"), net_of(f"2001:db8:{k:x}::/56")), interval=60.0)
        hist.write(book.apply(Event("start", info, 100.0 + k)))
    hist.write(book.apply(Event("stop", SessionInfo("radius", "bng1/a", "S3", "u3"), 200.0)))
    policy_id = "".join(["c", "4"])                 # a string object of its own, like the policy's
    fresh = Book(LiveTable())
    fresh.resolve = lambda x: (policy_id, False) if x == "c4" else (x, True)
    chunks = list(hist.open_rows(chunk=7))
    assert chunks.pop(0) == 24
    fresh.table.reserve(24)
    assert chunks[-1] == 26 and [len(c) for c in chunks[:-1]] == [7, 7, 7, 3]
    for c in chunks[:-1]:
        fresh.restore_rows(c)
    t = fresh.table
    assert len(t) == 24 and fresh.next_id == 26 and t.customer_of("10.0.0.3") is None
    assert t.customer_of("2001:db8:5::1") == "u5" and t.lookup("10.0.0.5").implicit
    assert t.lookup("10.0.0.4").customer is policy_id and not t.lookup("10.0.0.4").implicit
    assert t.count_by_source() == {"radius": 24} and t.has_customer("u7") and not t.has_customer("u3")


def test_implicit_customer_has_no_subscriber_until_a_decision_names_it():
    t = LiveTable()
    t.add(_session(1, "bng1/a", "S1", "u77", [(4, int(ipaddress.IPv4Address("10.9.0.1")), 32)], implicit=True))
    view = SubscriberView(prefixes=ClientLookup(PrefixIndex([]), t))
    sub = view.subscriber("10.9.0.1")
    assert "u77" not in view.by_id and sub.customer == "u77" and sub.security and not sub.opted_out
    assert view.subscriber("10.9.0.2").customer is None                 # not a session: unknown
    decided = update_view(view, Decisions().with_(Decision("optout", "u77", True)), ("u77",))
    assert decided.by_id["u77"].opted_out and decided.subscriber("10.9.0.1").opted_out
    assert decided.optouts == {"u77"}


def test_short_strings_keep_every_string_and_long_ones_aside():
    from nocpolicy.sessions.strcol import ShortStrings
    col = ShortStrings()
    values = ["", "S1", "0A0B0C0D-00000001", "x" * 24, "y" * 25, "10.20.0.5|02:aa:00:00:00:02",
              "セッション-1", "nul\0inside", "\udcff", b"\xff\xfe not UTF-8"]
    for v in values:
        col.append(v)
    assert [col[i] for i in range(len(values))] == values
    col[4] = "short now"
    col[1] = "z" * 40
    col.drop(2)
    assert col[4] == "short now" and col[1] == "z" * 40 and col[2] == "" and len(col) == len(values)


def test_dns_engine_builds_implicit_subscribers_and_keeps_a_bounded_number():
    from nocpolicy.dns import engine
    subs = engine._Subscribers({None: engine.UNKNOWN_MODES["refuse"]})
    assert subs["u1"].customer == "u1" and subs["u1"].security and not subs["u1"].refuse
    assert subs[None].refuse                                  # unknown clients keep their mode
    for k in range(engine.IMPLICIT_KEPT + 10):
        assert subs[f"x{k}"].customer == f"x{k}"
    assert len(subs) == engine.IMPLICIT_KEPT + 1             # None + the kept ones, no more


def test_whois_reads_only_matching_sessions_and_upgrades_an_older_history(tmp_path):
    from nocpolicy.sessions import history as hmod
    from nocpolicy.sessions.whois import whois
    store = Store(tmp_path / "db.sqlite")
    store.migrate("sessions", hmod.MIGRATIONS[:1])            # a history written before the stop column
    old = store.path
    import sqlite3
    db = sqlite3.connect(old)
    db.execute("INSERT INTO sessions (id, source, nas, sid, customer, start, stop, last, addrs) "
               "VALUES (1, 'radius', 'bng1/a', 'S0', 'c0', 10.0, 20.0, 10.0, '4:3405803783:32')")
    db.execute("INSERT INTO session_addrs VALUES ('4cb007107', 10.0, 1, 32)")
    db.execute("INSERT INTO session_plens VALUES (4, 32)")
    db.commit()
    db.close()
    h = History(store)                                         # migrates: adds session_addrs.stop
    book = Book(LiveTable(), next_id=2)
    info = SessionInfo("radius", "bng1/a", "S1", "c1", addrs=(net_of("203.0.113.7/32"),))
    h.write(book.apply(Event("start", info, 100.0)))
    h.write(book.apply(Event("stop", info, 200.0)))
    assert [m["customer"] for m in whois(h, (), "203.0.113.7", 150.0, None)["matches"]] == ["c1"]
    assert whois(h, (), "203.0.113.7", 250.0, None)["matches"] == []
    assert [m["customer"] for m in whois(h, (), "203.0.113.7", 15.0, None)["matches"]] == ["c0"]   # old row
    assert whois(h, (), "203.0.113.7", 50.0, None)["matches"] == []
    assert h._all("SELECT stop FROM session_addrs WHERE session=2")[0][0] == 200.0
    h.close()
    store.close()


def test_stale_sweep_walks_the_table_only_when_a_session_may_be_due():
    t = LiveTable()
    book = Book(t)
    for k, interval in enumerate((300.0, 86400.0, 0.0)):
        info = SessionInfo("radius", "bng1/a", f"S{k}", "c1", addrs=(net_of(f"10.1.0.{k}/32"),), interval=interval)
        book.apply(Event("start", info, 1000.0))
    assert not book.stale(1000.0 + 300 + 600, {"radius": 600.0})          # not yet (strictly later)
    assert [c[2] for c in book.stale(1901.0, {"radius": 600.0}).closes] == [1]
    assert t._due == 1000.0 + 86400                                          # the next one that can be due
    assert not book.stale(50_000.0, {"radius": 600.0}) and len(t) == 2
    late = SessionInfo("radius", "bng1/a", "S9", "c1", addrs=(net_of("10.1.0.9/32"),), interval=60.0)
    book.apply(Event("start", late, 40_000.0))                               # lowers the bound again
    assert [c[2] for c in book.stale(50_000.0, {"radius": 600.0}).closes] == [4]
