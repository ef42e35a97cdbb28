"""Property tests for the data structures of the accounting ingest path (issue 15, ninth
pass): the live table's columns growing a block of free slots at a time, ShortStrings in one
bytearray, IntMap's cached load limit, and the decoder's packet that files attribute codes
straight into its OrderedDict -- each against a plain model or against pyrad's own packet."""

from __future__ import annotations

import struct
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyrad import packet as rp

from intmap_impls import INTMAPS
from nocpolicy.sessions import radius
from nocpolicy.sessions import table as tmod
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.model import Event, SessionInfo
from nocpolicy.sessions.strcol import WIDTH, ShortStrings
from nocpolicy.sessions.table import LiveTable

# session ids: short, exactly WIDTH bytes, longer, multi-byte UTF-8, a lone surrogate
_sids = st.one_of(st.text(max_size=4), st.text(min_size=20, max_size=30),
                  st.sampled_from(["", "x" * WIDTH, "y" * (WIDTH + 1), "セッション", "\udcff"]),
                  st.binary(max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["set", "drop", "extend"]), st.integers(0, 40), _sids),
                max_size=80))
def test_short_strings_match_a_list(steps):
    col, ref = ShortStrings(), []
    for op, i, s in steps:
        if op == "extend":
            col.extend(i % 5)
            ref += [""] * (i % 5)
        elif not ref:
            col.append(s)
            ref.append(s)
        elif op == "set":
            col[i % len(ref)] = s
            ref[i % len(ref)] = s
        else:
            col.drop(i % len(ref))
            ref[i % len(ref)] = ""
        assert len(col) == len(ref)
    assert [col[i] for i in range(len(ref))] == ref


@pytest.mark.parametrize("IntMap", INTMAPS)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60), st.integers(0, (1 << 31) - 1)), max_size=300),
       st.integers(1, 40))
def test_intmap_matches_a_dict_across_growth(IntMap, steps, capacity):
    m, ref = IntMap(capacity), {}
    for put, k, v in steps:
        key = (k * 0x1000_0000_0001) & ((1 << 64) - 1)      # keys that share home slots
        if put:
            assert m.add(key, v) == ref.get(key)
            ref.setdefault(key, v)
        else:
            assert m.pop(key) == ref.pop(key, None)
        assert len(m) == len(ref) and len(m) <= (m._mask + 1) * 0.6
    assert sorted(m.items()) == sorted(ref.items())


_addr_shapes = st.sampled_from([
    ((4, 0, 32),), ((4, 0, 32), (6, 0, 56)), ((6, 0, 64),), ((6, 0, 64), (6, 1, 56), (4, 1, 32)),
    ((6, 5, 128),), (), ((4, 0, 24),)])


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "stop", "update"]), st.integers(0, 30), _sids,
                          _addr_shapes, st.integers(0, 30)), max_size=120),
       st.integers(1, 4))
def test_book_and_table_match_a_model_while_the_columns_grow(steps, grow):
    """Starts, updates and stops through the book (starts take the put-by-index path) with
    free slots added ``grow`` at a time: after every step each session reads back whole, by
    key, by address and in the full listings, as a dict-per-session model says."""
    old = tmod.GROW_MIN
    tmod.GROW_MIN = grow
    try:
        t = LiveTable()
        book = Book(t)
        book.resolve = lambda x: (x, x is not None and x.startswith("i"))
        model: dict[tuple[str, str], tuple] = {}
        closed: set = set()                      # keys the book remembers as closed (duplicate Stops)

        def displace(key, addrs):
            for other in [o for o, s in model.items() if o != key and set(s[1]) & set(addrs)]:
                del model[other]
                closed.add(other)

        for n, (kind, k, sid, shape, c) in enumerate(steps):
            key = (f"bng{k % 3}/x", f"{sid}-{k}" if isinstance(sid, str) else sid + bytes([k]))
            addrs = tuple((fam, (0x64400000 + k * 8 + i if fam == 4 else ((0x20010DB8 << 96) | (k << 72) | i)) &
                           ~((1 << ((32 if fam == 4 else 128) - plen)) - 1), plen) for fam, i, plen in shape)
            info = SessionInfo("radius", key[0], key[1], f"i{c}" if c % 2 else (f"c{c}" if c else None),
                               addrs=addrs, interval=float(c))
            ts = 1000.0 + n
            if n == 7:
                t.reserve(len(t) + 3 * grow)          # a restore's exact sizing, amid the steps
            book.apply(Event(kind, info, ts))
            if kind == "stop":
                if key not in model and key not in closed:      # opened, then closed at once
                    displace(key, addrs)
                model.pop(key, None)
                closed.add(key)
            elif key not in model or (addrs and not set(addrs) <= set(model[key][1])):
                displace(key, addrs)
                model[key] = (info.customer, addrs, float(c), ts)
                closed.discard(key)
            else:
                model[key] = (*model[key][:3], ts)
            assert len(t) == len(model)
            for (nas, s_id), (cust, a, interval, last) in model.items():
                got = t.get(nas, s_id)
                assert (got.nas, got.sid, got.customer, got.addrs, got.interval, got.last) == \
                    (nas, s_id, cust, a, interval, last)
                assert got.implicit == (cust is not None and cust.startswith("i"))
                for net in a:                    # its own, or a longer prefix inside it
                    hit = t.find(net[0], net[1])
                    assert hit is not None and (hit[1] > net[2] or (hit[0].sid, hit[0].nas) == (s_id, nas))
        assert sorted((s.nas, repr(s.sid)) for s in t.sessions()) == sorted((n, repr(s)) for n, s in model)
        for nas in {k[0] for k in model}:
            assert len(t.by_nas(nas)) == sum(1 for k in model if k[0] == nas)
    finally:
        tmod.GROW_MIN = old


_attr = st.tuples(st.sampled_from([1, 4, 8, 25, 26, 31, 32, 40, 44, 55, 80, 97, 123, 200]),
                  st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(_attr, max_size=12), st.integers(0, 255))
def test_decoder_files_attributes_as_pyrads_packet_does(attrs, ident):
    """The decoder's packet subclass decodes any attribute list (repeats, vendor-specific,
    Message-Authenticator) into the same attributes, in the same order, as pyrad's AcctPacket,
    and ``attributes`` accepts or refuses it the same way with both."""
    body = b"".join(bytes((code, len(v) + 2)) + v for code, v in attrs)
    data = struct.pack("!BBH16s", 4, ident, 20 + len(body), bytes(16)) + body
    ours, theirs = radius._Packet(id=0), rp.AcctPacket(id=0)
    results = []
    for pkt in (ours, theirs):
        try:
            pkt.DecodePacket(data)
            results.append(list(OrderedDict.items(pkt)))
        except rp.PacketError as exc:
            results.append(("error", str(exc)))
    assert results[0] == results[1]
    if isinstance(results[0], list):
        outcome = []
        for pkt in (ours, theirs):
            try:
                outcome.append(radius.attributes(pkt, framed_int=True))
            except radius.Rejected as exc:
                outcome.append(("rejected", str(exc)))
        assert outcome[0] == outcome[1]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(radius.TYPES)), st.integers(0, 253))
def test_attribute_lengths_follow_rfc_2865(code, n):
    """A value of each type is refused exactly when RFC 2865 section 5 forbids its length:
    fixed sizes, 2-18 octets for an IPv6 prefix, a string at least one octet."""
    name, kind = radius.TYPES[code]
    fixed = {"ipaddr": 4, "integer": 4, "date": 4, "ipv6addr": 16}.get(kind)
    bad = (fixed is not None and n != fixed) or (kind == "ipv6prefix" and not 2 <= n <= 18) \
        or (kind == "string" and n == 0)
    pkt = rp.AcctPacket(id=0)
    OrderedDict.__setitem__(pkt, code, [bytes(n)])
    try:
        radius.attributes(pkt)
        refused = None
    except radius.Rejected as exc:
        refused = exc
    if bad:
        assert refused is not None and str(refused) == f"attribute {name} has length {n}"
    else:
        assert refused is None or "cannot read" in str(refused)
