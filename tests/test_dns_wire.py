"""The hot-path wire code: parse, answers built by patching the query, fuzzed with hypothesis."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nocpolicy.dns.wire import (
    FORMERR,
    NXDOMAIN,
    WireError,
    answer,
    answer_cnames,
    error_reply,
    parse_query,
    read_name,
    sinkhole_record,
    truncate_for_udp,
    with_id,
)


def q(name="Www.Example.ORG", rdtype="A", edns=0, payload=1232) -> bytes:
    return dns.message.make_query(name, rdtype, use_edns=edns, payload=payload).to_wire()


def test_parse_question_lowercases_name_and_sees_edns():
    data = q()
    p = parse_query(data)
    assert (p.name, p.qtype, p.qclass, p.edns) == ("www.example.org", 1, 1, 1232)
    assert p.id == int.from_bytes(data[:2], "big")
    assert parse_query(q(edns=-1)).edns == 0
    assert parse_query(q(payload=100)).edns == 512        # never below 512
    assert parse_query(q(".")).name == ""


@pytest.mark.parametrize("bad,why", [
    (b"\x00" * 5, "shorter"),
    (bytes.fromhex("abcd81000001000000000000") + b"\x00\x00\x01\x00\x01", "QR bit"),
    (bytes.fromhex("abcd01000002000000000000") + b"\x00\x00\x01\x00\x01", "question count"),
    (bytes.fromhex("abcd01000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01", "compression"),
    (bytes.fromhex("abcd01000001000000000000") + b"\x03www\x00\x00", "truncated"),
    (bytes.fromhex("abcd01000001000000000000") + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "longer"),
])
def test_malformed_queries_raise_wire_error(bad, why):
    with pytest.raises(WireError, match=why):
        parse_query(bad)


@pytest.mark.parametrize("ede,rcode", [(15, NXDOMAIN), (16, NXDOMAIN), (17, NXDOMAIN), (4, 0)])
def test_answer_is_valid_dns_with_ede(ede, rcode):
    data = q("Blocked.Example")
    p = parse_query(data)
    records, n = (sinkhole_record(1, bytes([10, 0, 0, 1])), 1) if ede == 4 else (b"", 0)
    out = answer(data, p, rcode, ede=ede, text="security list cc", records=records, ancount=n)
    m = dns.message.from_wire(out)
    assert m.id == p.id and m.rcode() == rcode
    assert str(m.question[0].name) == "Blocked.Example."          # case preserved
    assert [(o.code, o.text) for o in m.options if isinstance(o, dns.edns.EDEOption)] == [(ede, "security list cc")]
    if ede == 4:
        assert [str(r) for r in m.answer[0]] == ["10.0.0.1"]


def test_answer_without_edns_has_no_opt_and_copies_rd():
    data = q(edns=-1)
    m = dns.message.from_wire(answer(data, parse_query(data), NXDOMAIN, ede=15))
    assert m.edns == -1 and m.flags & dns.flags.RD and m.flags & dns.flags.QR


def test_error_reply_and_with_id():
    assert error_reply(b"\x01", FORMERR) is None
    r = error_reply(bytes.fromhex("abcd0100000100000000000000"), FORMERR)
    assert r[:2] == b"\xab\xcd" and r[3] & 0xF == FORMERR and r[2] & 0x80
    assert error_reply(bytes.fromhex("abcd8100000100000000000000"), FORMERR) is None  # never answer responses
    assert with_id(b"\x00\x01rest", 0xBEEF) == b"\xbe\xefrest"


def test_cname_targets_with_compression():
    query = dns.message.make_query("alias.example.org", "A")
    resp = dns.message.make_response(query)
    resp.answer.append(dns.rrset.from_text("alias.example.org.", 60, "IN", "CNAME", "Evil.Example.org."))
    resp.answer.append(dns.rrset.from_text("evil.example.org.", 60, "IN", "A", "192.0.2.1"))
    assert answer_cnames(resp.to_wire()) == ["evil.example.org"]
    assert answer_cnames(b"\x00" * 11) == []


def test_read_name_rejects_pointer_loops():
    data = b"\x00" * 12 + b"\xc0\x0c"
    with pytest.raises(WireError):
        read_name(data, 12)


def test_truncate_for_udp_keeps_question_and_sets_tc():
    query = dns.message.make_query("big.example", "A", use_edns=-1)
    resp = dns.message.make_response(query)
    resp.answer.append(dns.rrset.from_text("big.example.", 60, "IN", "A", *[f"10.0.0.{i}" for i in range(60)]))
    wire = resp.to_wire()
    cut = truncate_for_udp(wire, 512)
    m = dns.message.from_wire(cut)
    assert len(cut) < 512 and m.flags & dns.flags.TC and not m.answer and str(m.question[0].name) == "big.example."


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_parser_raises_only_wire_error(data):
    try:
        p = parse_query(data)
    except WireError:
        return
    assert len(p.name) <= 255
    answer(data, p, NXDOMAIN, ede=15)     # building an answer to anything parsed never fails
    answer_cnames(data)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_fuzz_mutated_queries(data):
    base = bytearray(q(data.draw(st.sampled_from(["a.example", "x.y.z.example.org", "."]))))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    blob = bytes(base[:cut])
    try:
        p = parse_query(blob)
    except WireError:
        assert error_reply(blob, FORMERR) is None or len(error_reply(blob, FORMERR)) == 12
        return
    dns.message.from_wire(answer(blob, p, NXDOMAIN, ede=16), question_only=True)
    answer_cnames(blob)
