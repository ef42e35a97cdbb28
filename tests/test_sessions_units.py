"""Session book, live table, history/whois and CGNAT mapping: pure parts and the real store."""

from __future__ import annotations

import ipaddress

import pytest

from nocpolicy.policy.sessions import NatPool
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.history import History
from nocpolicy.sessions.model import Event, SessionInfo, net_of
from nocpolicy.sessions.table import LiveTable
from nocpolicy.sessions.whois import nat_forward, nat_reverse, whois
from nocpolicy.store import Store


def info(sid="S1", customer="c1", addrs=("203.0.113.7/32",), nas="bng1/a", interval=300.0, source="radius"):
    return SessionInfo(source, nas, sid, customer, login=f"{customer}@isp", addrs=tuple(net_of(a) for a in addrs),
                       interval=interval)


def test_start_stop_recorded_once_and_lookup_follows(hist):
    table = LiveTable()
    book = Book(table)
    hist.write(book.apply(Event("start", info(addrs=("203.0.113.7/32", "2001:db8:77:100::/56")), 1000.0)))
    assert table.lookup("203.0.113.7").customer == "c1"
    assert table.lookup("2001:db8:77:1ab::5").customer == "c1"        # inside the delegated prefix
    assert table.contains("::ffff:203.0.113.7")
    assert not table.contains("203.0.113.8")
    # a repeated Start (retransmission with a new Identifier) makes no second record
    assert not book.apply(Event("start", info(addrs=("203.0.113.7/32", "2001:db8:77:100::/56")), 1001.0)).inserts
    hist.write(book.apply(Event("stop", info(), 2000.0, reason="user-request")))
    assert not table.contains("203.0.113.7")
    assert not book.apply(Event("stop", info(), 2001.0))             # duplicate Stop: nothing written
    assert book.counts["duplicate_stop"] == 1
    rows = hist.list(customer="c1", active=False, limit=10)
    assert len(rows) == 1 and rows[0]["stop"] == 2000.0 and rows[0]["ended"] == "user-request"


def test_stop_without_start_is_recorded_and_counted(hist):
    book = Book(LiveTable())
    hist.write(book.apply(Event("stop", info(sid="X"), 5000.0, elapsed=600.0)))
    assert book.counts["no_start"] == 1
    (row,) = hist.list(customer="c1", active=False, limit=10)
    assert (row["start"], row["stop"]) == (4400.0, 5000.0)
    assert whois(hist, (), "203.0.113.7", 4500.0, None)["matches"][0]["customer"] == "c1"


def test_accounting_on_closes_only_that_nas(hist):
    table = LiveTable()
    book = Book(table)
    hist.write(book.apply(Event("start", info("a", addrs=("10.0.0.1/32",)), 1.0)))
    hist.write(book.apply(Event("start", info("b", addrs=("10.0.0.2/32",), nas="bng2/x"), 1.0)))
    hist.write(book.apply(Event("nas-off", info("", nas="bng1/a"), 50.0, reason="accounting-on")))
    assert not table.contains("10.0.0.1") and table.contains("10.0.0.2")
    assert hist.list(customer=None, active=True, limit=10)[0]["session_id"] == "b"


def test_stale_sessions_closed_after_interval_plus_grace(hist):
    table = LiveTable()
    book = Book(table)
    hist.write(book.apply(Event("start", info(interval=300.0), 1000.0)))
    assert not book.stale(1000.0 + 300 + 59, {"radius": 60.0})
    ops = book.stale(1000.0 + 300 + 61, {"radius": 60.0})
    hist.write(ops)
    assert not table.contains("203.0.113.7") and book.counts["stale"] == 1
    (row,) = hist.list(customer="c1", active=False, limit=5)
    assert row["ended"] == "stale" and row["stop"] == 1300.0


def test_new_session_on_same_address_displaces_the_old(hist):
    table = LiveTable()
    book = Book(table)
    hist.write(book.apply(Event("start", info("a", customer="c1"), 1.0)))
    hist.write(book.apply(Event("start", info("b", customer="c2"), 10.0)))
    assert table.lookup("203.0.113.7").customer == "c2"
    assert whois(hist, (), "203.0.113.7", 5.0, None)["matches"][0]["customer"] == "c1"
    assert whois(hist, (), "203.0.113.7", 11.0, None)["matches"][0]["customer"] == "c2"


def test_implicit_and_unattributed_customers():
    book = Book(LiveTable())
    known = {"c1"}
    book.resolve = lambda x: (None, False) if x is None else (x, x not in known)
    book.apply(Event("start", info("a", customer="c77"), 1.0))
    book.apply(Event("start", info("b", customer=None, addrs=("10.9.9.9/32",)), 1.0))
    assert book.table.lookup("203.0.113.7").implicit
    assert book.table.lookup("10.9.9.9").customer is None
    assert book.counts["unattributed"] == 1


def test_table_bounded():
    book = Book(LiveTable(), max_active=2)
    for i in range(3):
        book.apply(Event("start", info(str(i), addrs=(f"10.0.0.{i}/32",)), 1.0))
    assert len(book.table) == 2 and book.counts["full"] == 1


def test_whois_history_across_time_and_restart(hist, tmp_path):
    book = Book(LiveTable())
    hist.write(book.apply(Event("start", info("a", customer="c1"), 100.0)))
    hist.write(book.apply(Event("stop", info("a", customer="c1"), 200.0)))
    hist.write(book.apply(Event("start", info("b", customer="c2"), 300.0)))
    assert whois(hist, (), "203.0.113.7", 150.0, None)["matches"][0]["customer"] == "c1"
    out = whois(hist, (), "203.0.113.7", 250.0, None)
    assert out["matches"] == [] and "no session" in out["unattributed"]
    live, next_id = hist.open_sessions()
    assert [s.customer for s in live] == ["c2"] and next_id == 3


def test_prune_deletes_only_sessions_ended_before_the_cutoff(hist):
    book = Book(LiveTable())
    hist.write(book.apply(Event("start", info("a"), 100.0)))
    hist.write(book.apply(Event("stop", info("a"), 200.0)))
    hist.write(book.apply(Event("start", info("b", addrs=("10.1.1.1/32",)), 100.0)))
    assert hist.prune(before=300.0) == 1
    assert [r["session_id"] for r in hist.list(customer=None, active=False, limit=10)] == ["b"]
    assert whois(hist, (), "203.0.113.7", 150.0, None)["matches"] == []


POOL = NatPool("cgn1", ipaddress.ip_network("198.51.100.0/30"), ipaddress.ip_network("100.64.0.0/24"),
               1024, 65535, 1008)


def test_cgnat_port_blocks_round_trip():
    assert POOL.blocks_per_address == 64
    for k in (0, 1, 63, 64, 200, 255):
        internal = POOL.internal.network_address + k
        public, (lo, hi) = nat_forward(POOL, internal)
        for port in (lo, hi, (lo + hi) // 2):
            _, hit, why = nat_reverse([POOL], ipaddress.ip_address(public), port)
            assert hit is not None and hit.internal == str(internal), why
    _, hit, why = nat_reverse([POOL], ipaddress.ip_address("198.51.100.1"), None)
    assert hit is None and "--port" in why
    _, hit, why = nat_reverse([POOL], ipaddress.ip_address("198.51.100.3"), 1023)
    assert hit is None and "outside" in why


def test_whois_through_cgnat(hist):
    book = Book(LiveTable())
    internal = POOL.internal.network_address + 70          # public .1, second block
    hist.write(book.apply(Event("start", info("a", customer="c9", addrs=(f"{internal}/32",)), 100.0)))
    public, (lo, _) = nat_forward(POOL, internal)
    out = whois(hist, [POOL], public, 150.0, lo + 5)
    assert out["nat"]["internal"] == str(internal) and out["matches"][0]["customer"] == "c9"
    other = whois(hist, [POOL], public, 150.0, lo - 1)      # the neighbour's block: nobody
    assert other["matches"] == [] and other["nat"]["internal"] != str(internal)


def test_static_prefix_wins_a_conflict_and_is_counted():
    from nocpolicy.subscribers.live import ClientLookup
    from nocpolicy.subscribers.prefixes import PrefixIndex
    static = PrefixIndex([(ipaddress.ip_network("192.0.2.0/26"), "c1001")])
    table = LiveTable()
    book = Book(table)
    book.static = static.lookup
    book.apply(Event("start", info("a", customer="c77", addrs=("192.0.2.10/32",)), 1.0))
    book.apply(Event("start", info("b", customer="c1001", addrs=("192.0.2.11/32",)), 1.0))   # its own: fine
    book.apply(Event("start", info("c", customer="c78", addrs=("10.1.2.3/32",)), 1.0))
    assert book.counts["conflict"] == 1
    lookup = ClientLookup(static, table)
    assert lookup.lookup("192.0.2.10") == "c1001"       # static wins
    assert lookup.lookup("10.1.2.3") == "c78"
    assert lookup.lookup("10.1.2.4") is None


def test_worker_replica_follows_changes_and_loads_open_sessions(hist):
    from nocpolicy.subscribers.live import AddressTable, change_from_json, change_to_json
    book = Book(LiveTable())
    changes = []
    book.on_change = lambda old, new: changes.extend(
        [("-", old.addrs, old.customer, old.implicit)] if old else []) or changes.extend(
        [("+", new.addrs, new.customer, new.implicit)] if new else [])
    book.resolve = lambda x: (x, x == "c77")
    hist.write(book.apply(Event("start", info("a", customer="c77", addrs=("10.5.0.1/32", "2001:db8:9::/56")), 1.0)))
    hist.write(book.apply(Event("start", info("b", customer="c1", addrs=("10.5.0.2/32",)), 1.0)))
    replica = AddressTable()
    for c in changes:
        replica.apply(change_from_json(change_to_json(c)))   # as sent over the worker pipe
    assert replica.customer_of("2001:db8:9:ff::1") == "c77" and replica.implicit == {"c77": 1}
    assert replica.contains("10.5.0.2") and not replica.contains("10.5.0.3")
    fresh = AddressTable()
    assert fresh.load(hist.path) == 2 and fresh.customer_of("10.5.0.1") == "c77"
    changes.clear()
    hist.write(book.apply(Event("stop", info("a", customer="c77"), 5.0)))
    for c in changes:
        replica.apply(change_from_json(change_to_json(c)))
    assert replica.customer_of("10.5.0.1") is None and replica.implicit == {}
    with pytest.raises(ValueError):
        change_from_json(["x", [], None, False])


def test_close_waits_for_a_statement_running_in_another_thread(tmp_path):
    """A stop cancels the task awaiting a prune, not the thread running it; closing the
    connection under the running statement crashed the daemon (SIGSEGV on a refused start)."""
    import threading

    from nocpolicy.errors import StoreError

    store = Store(tmp_path / "db.sqlite")
    h = History(store)
    h._wlock.acquire()                       # a prune or group commit holds the writer
    closer = threading.Thread(target=h.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "close() did not wait for the writer"
    h._wlock.release()
    closer.join(10)
    assert not closer.is_alive()
    with pytest.raises(StoreError):
        h.prune(before=1.0)
    store.close()


# -- the accounting decoder (pyrad, after a check of the header and attribute framing) -----

def _pyrad_request(secret: bytes, proxy_states=(), ident: int = 77) -> bytes:
    from pyrad import packet as rp

    from nocpolicy.sessions.radius import dictionary
    p = rp.AcctPacket(id=ident, secret=secret, dict=dictionary())
    p["Acct-Status-Type"] = 3
    p["Acct-Session-Id"] = "S-1"
    p["User-Name"] = "c1001@isp.example"
    p["Framed-IP-Address"] = "203.0.113.7"
    p["Event-Timestamp"] = 1_800_000_000
    for ps in proxy_states:
        p.AddAttribute("Proxy-State", ps)
    return p.RequestPacket()


def test_decoder_reads_what_pyrad_wrote_and_the_reply_verifies():
    from pyrad import packet as rp

    from nocpolicy.sessions import radius
    secret = b"s3cret"
    wire = _pyrad_request(secret, proxy_states=(b"hop-1", b"hop-2"))
    raw = radius.decode(wire, secret)
    attrs = radius.attributes(raw)
    assert attrs["Acct-Session-Id"] == "S-1" and attrs["User-Name"] == "c1001@isp.example"
    assert attrs["Acct-Status-Type"] == 3 and attrs["Event-Timestamp"] == 1_800_000_000
    assert attrs["Framed-IP-Address"] == "203.0.113.7"
    ours = radius.reply(raw)
    req = rp.AcctPacket(packet=wire, secret=secret, dict=radius.dictionary())
    got = rp.AcctPacket(packet=ours, secret=secret, dict=radius.dictionary())
    assert req.VerifyReply(got, ours)                       # the client accepts the response
    assert got.code == rp.AccountingResponse and got.id == 77
    assert got["Proxy-State"] == [b"hop-1", b"hop-2"]       # copied unmodified and in order


def test_the_reused_replier_codes_what_create_reply_codes():
    """The listener's Replier reuses one reply packet: each reply equals pyrad's CreateReply
    one, and no Proxy-State of an earlier request reaches a later reply."""
    from nocpolicy.sessions import radius
    replier = radius.Replier()
    for secret, states in ((b"s3cret", (b"hop-1", b"hop-2")), (b"other", ()), (b"s3cret", (b"x",)),
                           (b"s3cret", ())):
        for ident in (0, 77, 255):
            raw = radius.decode(_pyrad_request(secret, proxy_states=states, ident=ident), secret)
            assert replier(raw) == radius.reply(raw)


@pytest.mark.parametrize("mangle,why", [
    (lambda w: w[:-1] + bytes([w[-1] ^ 1]), "bad-authenticator"),      # one bit of an attribute
    (lambda w: w[:4] + bytes(16) + w[20:], "bad-authenticator"),
    (lambda w: bytes([5]) + w[1:], "unsupported"),                          # an Accounting-Response
    (lambda w: w[:2] + (19).to_bytes(2, "big") + w[4:], "malformed"),
    (lambda w: w[:10], "malformed"),
])
def test_decoder_rejects_with_the_reason(mangle, why):
    from nocpolicy.sessions import radius
    secret = b"s3cret"
    wire = _pyrad_request(secret)
    bad = mangle(wire)
    with pytest.raises(radius.Rejected) as exc:
        radius.decode(bad, secret)
    assert exc.value.why == why


def test_decoder_rejects_an_attribute_running_past_the_length():
    import hashlib

    from nocpolicy.sessions import radius
    secret = b"s3cret"
    attrs = bytes((40, 6)) + (1).to_bytes(4, "big") + bytes((44, 9)) + b"S-1"      # says 9, has 5
    head = bytes((4, 1)) + (20 + len(attrs)).to_bytes(2, "big")
    wire = head + hashlib.md5(head + bytes(16) + attrs + secret).digest() + attrs
    with pytest.raises(radius.Rejected) as exc:
        radius.decode(wire, secret)
    assert exc.value.why == "malformed" and "runs past" in str(exc.value)


def test_a_staged_commit_is_durable_only_once_committed_and_yields_to_another_writer(tmp_path):
    """History.stage (the group commit's event-loop half): nothing is done while another
    writer holds the connection; staged rows are invisible to readers until the returned
    commit runs; a failed statement rolls back and frees the writer."""
    import sqlite3

    from nocpolicy.errors import StoreError
    from nocpolicy.sessions.model import Ops

    store = Store(tmp_path / "db.sqlite")
    h = History(store)

    def ops(i: int) -> Ops:
        o = Ops()
        o.inserts.append((i, "radius", "bng1/bng1", f"S{i}", f"c{i}", 0, "", "", "", 1.0, None, 1.0,
                          300.0, None, f"4:{0x0A000000 + i}:32"))
        o.addrs.append((i, f"4{0x0A000000 + i:08x}", 32, 1.0))
        return o

    reader = sqlite3.connect(store.path)
    count = lambda: reader.execute("SELECT count(*) FROM sessions").fetchone()[0]   # noqa: E731
    try:
        h._wlock.acquire()                   # a prune holds the writer
        assert h.stage(ops(1)) is None       # nothing done: the caller writes in a thread instead
        h._wlock.release()
        commit = h.stage(ops(1))
        assert commit is not None and count() == 0, "staged, not yet committed: invisible"
        commit()
        assert count() == 1
        assert h.at(4, 0x0A000001, 2.0)[0][0]["customer"] == "c1"
        bad = ops(2)
        bad.touches.append((1.0,))           # a statement that fails (a missing parameter)
        with pytest.raises(StoreError):
            h.stage(bad)
        assert count() == 1, "rolled back"
        h.write(ops(3))                      # the writer is free again
        assert count() == 2
    finally:
        reader.close()
        h.close()
        store.close()
