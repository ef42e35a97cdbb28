"""Blocked answers for never-seen children of a listed name (zones.py, issue 14 DGA floods).

Every answer the parent entry gives must be the answer the full path (parse, judge, answer)
gives for the same query, byte for byte; a child that some list names itself, or whose first
label hides a dot, must still be judged on its own. Also: the parents bitmap has no false
negatives, the counts reach the stats and the detection log, and the store's write-ahead log
stays small.
"""

from __future__ import annotations

import os
import random
import string

import dns.message
import dns.rcode

from nocpolicy.dns.detections import DetectionLog
from nocpolicy.dns.engine import Engine
from nocpolicy.dns.lists import CompiledList, DomainIndex, ListSet, NameSet
from nocpolicy.dns.stats import DnsStats
from nocpolicy.dns.verdict import Verdict
from nocpolicy.policy.dnsguard import RateLimit
from nocpolicy.store import Store
from nocpolicy.store.db import WAL_LIMIT

CLIENT = "127.0.0.10"              # loopback: inside the default access list


def engine(tmp_path, lists, store=None, limits: bool = False):
    """An engine with ``lists``; per-source limits off unless ``limits``."""
    store = store or Store(tmp_path / "db.sqlite")
    e = Engine(DnsStats(), DetectionLog(store, b"k" * 32))
    e.swap(ListSet.of(lists))
    if not limits:
        e.limiter.configure(RateLimit(qps=0, blocked_qps=0))
    return e


def security(*names, exact=None, allow=(), action="nxdomain", id="cc"):
    idx = DomainIndex(NameSet(names), dict(exact or {}))
    return CompiledList(id, "security", action, idx, DomainIndex(NameSet(allow)), sinkhole_a="192.0.2.99")


def mandatory(*names, action="refused"):
    return CompiledList("csam", "mandatory", action, DomainIndex(NameSet(names)), DomainIndex())


def wire(name: str, qid: int = 1, edns: bool = False, qtype: str = "A") -> bytes:
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


def ask(e: Engine, data: bytes, host: str = CLIENT) -> list[bytes]:
    out: list[bytes] = []
    e.udp_handler(lambda b, _a: out.append(bytes(b)))(data, host, (host, 5300), 0.0)
    return out


def full_path(tmp_path, lists, data: bytes) -> bytes:
    """The answer of a fresh engine (no cache of any kind: parse, judge, answer)."""
    sub = tmp_path / f"fresh{random.random()}"
    sub.mkdir()
    (got,) = ask(engine(sub, lists), data)
    return got


RNG = random.Random(7)


def dga(n: int, parent: str, rng=RNG) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase + string.digits, k=10)) + "." + parent for _ in range(n)]


def test_never_seen_children_share_one_entry_and_get_the_full_path_answer(tmp_path):
    lists = [security("evil.example")]
    e = engine(tmp_path, lists)
    names = dga(300, "evil.example")
    for i, name in enumerate(names):
        for data in (wire(name, i), wire(name.upper(), i + 1, edns=True), wire(name, i + 2, qtype="AAAA")):
            (got,) = ask(e, data)
            if i < 15:
                assert got == full_path(tmp_path, lists, data)
            else:
                r = dns.message.from_wire(got)
                assert r.id == data[0] << 8 | data[1] and r.rcode() == dns.rcode.NXDOMAIN
    r = dns.message.from_wire(ask(e, wire("NeVeR.Seen.Evil.Example", 77, edns=True))[0])
    assert r.id == 77 and r.rcode() == dns.rcode.NXDOMAIN and str(r.question[0].name) == "NeVeR.Seen.Evil.Example."
    assert r.options[0].code == 15                        # EDE option: Blocked
    # one entry per parent and query shape (A, A+EDNS, AAAA) answered them all; the per-name
    # cache holds none of these names
    assert len(e.zones[None]) <= 6 and not any(e.answers.values())
    e.drain()
    assert e.stats.blocked[("cc", "security", "nxdomain")] == 3 * 300 + 1
    rows = e.detections.take()
    assert sum(p[2] for p in rows.values()) == 3 * 300 + 1
    (key,) = {k[7] for k in rows}
    assert key == "evil.example"


def test_sinkhole_answers_from_the_entry_are_the_full_path_answers(tmp_path):
    lists = [security("evil.example", action="sinkhole")]
    e = engine(tmp_path, lists)
    for i, name in enumerate(dga(30, "c2.evil.example")):
        data = wire(name, i, edns=i % 2 == 0)
        (got,) = ask(e, data)
        assert got == full_path(tmp_path, lists, data)
        assert dns.message.from_wire(got).answer[0][0].address == "192.0.2.99"


def test_children_a_list_names_are_judged_on_their_own(tmp_path):
    lists = [mandatory("worse.evil.example"),
             security("evil.example", allow=("fine.evil.example",)),
             CompiledList("rpz", "security", "nodata",
                          DomainIndex(NameSet(), {"pass.evil.example": "passthru"}), DomainIndex())]
    e = engine(tmp_path, lists)
    for name in dga(5, "evil.example"):                    # the parent entry exists now
        ask(e, wire(name))
    assert e.zones[None]
    for name, rcode in (("worse.evil.example", dns.rcode.REFUSED),      # the mandatory list
                        ("fine.evil.example", dns.rcode.SERVFAIL),      # allowed: no upstream here
                        ("x.worse.evil.example", dns.rcode.REFUSED)):
        data = wire(name, 9)
        (got,) = ask(e, data)
        assert dns.message.from_wire(got).rcode() == rcode, name
        assert got == full_path(tmp_path, lists, data)
    # an exact RPZ entry "passthru" makes that list allow the child; the security list still blocks
    data = wire("pass.evil.example", 10)
    assert ask(e, data)[0] == full_path(tmp_path, lists, data)


def test_a_dot_inside_the_first_label_is_not_a_child(tmp_path):
    lists = [mandatory("b.evil.example"), security("evil.example")]
    e = engine(tmp_path, lists)
    for name in dga(3, "evil.example"):
        ask(e, wire(name))
    q = bytearray(wire("zz.evil.example", 5))
    q[12:15] = b"\x03a.b"                                  # first label "a.b": name a.b.evil.example
    (got,) = ask(e, bytes(q))
    assert dns.message.from_wire(got).rcode() == dns.rcode.REFUSED   # mandatory b.evil.example
    assert got == full_path(tmp_path, lists, bytes(q))


def test_list_update_in_place_reaches_children(tmp_path):
    lists = [mandatory("other.example"), security("evil.example")]
    e = engine(tmp_path, lists)
    for name in dga(3, "evil.example"):
        ask(e, wire(name))
    lists[0].index.subtree.add("new.evil.example")         # what `list update` does, then:
    e.invalidate()
    (got,) = ask(e, wire("new.evil.example"))
    assert dns.message.from_wire(got).rcode() == dns.rcode.REFUSED


def test_blocked_answer_limit_applies_to_children(tmp_path):
    e = engine(tmp_path, [security("evil.example")], limits=True)
    e.limiter.configure(RateLimit(blocked_qps=10, slip=0))
    answered = sum(len(ask(e, wire(n, i))) for i, n in enumerate(dga(50, "evil.example")))
    assert answered == 10 and e.stats.limits["blocked_dropped"] == 40


def test_children_past_the_blocked_limit_still_make_their_parents_entry(tmp_path):
    parents = [f"cc{i}.example" for i in range(30)]
    e = engine(tmp_path, [security(*parents)], limits=True)
    e.limiter.configure(RateLimit(blocked_qps=10, slip=0))
    answered = sum(len(ask(e, wire(f"first.{p}", i))) for i, p in enumerate(parents))
    assert answered == 10 and e.stats.limits["blocked_dropped"] == 20
    assert len(e.zones[None]) == 30                  # the 20 dropped ones made their parents' entries too
    e.drain()
    assert sum(p[2] for p in e.detections.take().values()) == 10    # only answers are counted as blocks
    e.limiter.tick()
    for i, p in enumerate(parents[20:]):             # next second: answered from those entries
        (got,) = ask(e, wire(f"second.{p}", 100 + i))
        assert got == full_path(tmp_path, [security(*parents)], wire(f"second.{p}", 100 + i))
    e.drain()
    rows = e.detections.take()
    assert sum(p[2] for p in rows.values()) == 10 and {k[7] for k in rows} == set(parents[20:])


def test_parents_bitmap_has_no_false_negatives():
    rng = random.Random(3)
    names = [".".join("".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 8)))
                      for _ in range(rng.randint(1, 4))) for _ in range(20_000)]
    s = NameSet(names)
    for n in names:
        if "." in n:
            assert s.may_have_children(n.split(".", 1)[1])
    assert not NameSet(["single"]).may_have_children("single") and not NameSet().may_have_children("x")


def test_write_ahead_log_stays_small(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    log = DetectionLog(store, b"k" * 32, now=lambda: 1_700_000_000.0)
    wal = tmp_path / "db.sqlite-wal"
    biggest = 0
    for i in range(300):                                   # ~300 write transactions of 50 rows each
        for j in range(50):
            log.note(Verdict("nxdomain", "c1", "cc", "security", f"e{j}.example", f"w{i}.e{j}.example"),
                     f"192.0.2.{j}")
        log.write(log.take())
        biggest = max(biggest, os.path.getsize(wal))
    assert biggest <= WAL_LIMIT + 64 * 4096                # autocheckpoint + journal_size_limit
    assert store.checkpoint() and os.path.getsize(wal) == 0
    assert store.one("SELECT SUM(count) FROM dns_detections")[0] == 300 * 50
    store.close()


def test_counts_and_sample_names_per_client_of_one_entry(tmp_path):
    e = engine(tmp_path, [security("evil.example")])
    a, b = "127.0.0.10", "127.0.0.11"
    asked = {a: ["One.evil.example", "one.evil.example", "TWO.evil.example", "three.evil.example"],
             b: ["four.evil.example"] * 3}
    for i in range(4):                                   # interleaved: b arrives while a owns the entry
        for host, names in asked.items():
            if i < len(names):
                ask(e, wire(names[i], i), host)
    assert len(e.zones[None]) == 1 and not any(e.answers.values())
    e.drain()
    rows = e.detections.take()
    by_client = {k[4]: (p[2], p[3]) for k, p in rows.items()}
    assert by_client[a][0] == 4 and by_client[b][0] == 3
    assert by_client[a][1] == ["one.evil.example", "two.evil.example", "three.evil.example"]
    assert by_client[b][1] == ["four.evil.example"]
    # the entry is clean again: the next second's counts start from zero
    ask(e, wire("five.evil.example", 9), b)
    e.drain()
    (p,) = e.detections.take().values()
    assert p[2] == 1 and p[3] == ["five.evil.example"]


def test_client_over_its_row_cap_is_counted_dropped(tmp_path):
    from nocpolicy.policy.dnsguard import DetectionLogConf
    e = engine(tmp_path, [security(*(f"cc{i}.example" for i in range(6)))])
    clock = [1000.0]
    e.detections.now = lambda: clock[0]
    e.detections.configure(DetectionLogConf(per_client=2, interval=60))
    for second in range(2):
        for i in range(6):
            for _ in range(3):
                ask(e, wire(f"x{second}{_}.cc{i}.example", i))
        e.drain()
        clock[0] += 1
    rows = e.detections.take()
    assert len(rows) == 2 and sum(p[2] for p in rows.values()) == 2 * 3 * 2   # two entries, both seconds
    assert e.detections.counters["detections_client_cap"] == 4 * 3 * 2               # the other four, both seconds
    clock[0] += 60                                                              # a new interval: admitted again
    ask(e, wire("y.cc5.example"))
    e.drain()
    assert [k[7] for k in e.detections.take()] == ["cc5.example"]
