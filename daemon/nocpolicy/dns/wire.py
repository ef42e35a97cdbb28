"""DNS wire format on the hot path, by hand (pure; dnslib costs ~50 us a parse).

:func:`parse_query` reads the header and the single question of a query and
raises :class:`WireError` -- and nothing else -- on any malformed input.
Answers are built by patching the query bytes: the question is copied as the
client sent it, so its ID and letter case are preserved.

EDNS: when the query carries an OPT record, the answer carries one too, with
an RFC 8914 Extended DNS Error option when there is something to say.
"""

from __future__ import annotations

import struct

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPE_A, TYPE_CNAME, TYPE_AAAA, TYPE_OPT = 1, 5, 28, 41
TYPE_HINFO, TYPE_ANY = 13, 255
EDNS_SIZE = 1232          # what we advertise (DNS flag day 2020)
MAX_QUERY = 4096          # larger "queries" are not queries
SINKHOLE_TTL = 60

EDE_TEXT = {4: "Forged Answer", 15: "Blocked", 16: "Censored", 17: "Filtered", 18: "Prohibited",
            22: "No Reachable Authority", 23: "Network Error"}


class WireError(ValueError):
    """The packet is not a well-formed DNS query (the only exception the parser raises)."""


class Query:
    """The parsed question. ``name`` is lower-case without the trailing dot (root: "")."""

    __slots__ = ("id", "flags", "name", "qtype", "qclass", "qend", "edns", "opcode")

    def __init__(self, qid, flags, name, qtype, qclass, qend, edns):
        self.id, self.flags, self.name = qid, flags, name
        self.qtype, self.qclass, self.qend, self.edns = qtype, qclass, qend, edns
        self.opcode = (flags >> 11) & 0xF

    def __repr__(self) -> str:
        return f"Query(id={self.id}, name={self.name!r}, qtype={self.qtype}, edns={self.edns})"


def parse_query(data: bytes) -> Query:
    """Header + question (+ EDNS presence and size). Raises WireError only."""
    n = len(data)
    if n < 17:
        raise WireError("shorter than a header and a question")
    if n > MAX_QUERY:
        raise WireError("oversized query")
    flags = (data[2] << 8) | data[3]
    if flags & 0x8000:
        raise WireError("QR bit set: a response, not a query")
    if data[4] != 0 or data[5] != 1:
        raise WireError("question count is not 1")
    pos = 12
    labels = []
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln > 63:
            raise WireError("bad label length or compression in the question")
        end = pos + 1 + ln
        labels.append(data[pos + 1:end])
        pos = end
        if pos > 267:
            raise WireError("name longer than 255 octets")
    qend = pos + 4
    if qend > n:
        raise WireError("question truncated")
    qtype = (data[pos] << 8) | data[pos + 1]
    qclass = (data[pos + 2] << 8) | data[pos + 3]
    edns = 0
    if data[11] or data[10]:  # ARCOUNT: look for OPT right after the question
        if (qend + 11 <= n and data[qend] == 0 and data[qend + 1] == 0 and data[qend + 2] == TYPE_OPT
                and not (data[6] or data[7] or data[8] or data[9])):
            edns = max(512, (data[qend + 3] << 8) | data[qend + 4])
    name = b".".join(labels).lower().decode("latin-1")
    return Query((data[0] << 8) | data[1], flags, name, qtype, qclass, qend, edns)


def opt_rr(ede: int | None = None, text: str = "") -> bytes:
    """An OPT pseudo-RR advertising EDNS_SIZE, optionally with an EDE option (RFC 8914)."""
    opts = b""
    if ede is not None:
        t = (text or EDE_TEXT.get(ede, "")).encode()[:200]
        opts = struct.pack("!HHH", 15, 2 + len(t), ede) + t
    return b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_SIZE, 0, len(opts)) + opts


def answer(data: bytes, q: Query, rcode: int, *, ede: int | None = None, text: str = "",
           records: bytes = b"", ancount: int = 0) -> bytes:
    """A local answer to query ``data``: RD and CD copied, RA set, question copied verbatim."""
    hi = 0x80 | (data[2] & 0x01)                 # QR, opcode 0, RD copied
    lo = 0x80 | (data[3] & 0x10) | (rcode & 0xF)  # RA, CD copied
    header = data[:2] + bytes((hi, lo, 0, 1, ancount >> 8, ancount & 0xFF, 0, 0, 0, 1 if q.edns else 0))
    tail = opt_rr(ede, text) if q.edns else b""
    return header + data[12:q.qend] + records + tail


def sinkhole_record(qtype: int, addr: bytes, ttl: int = SINKHOLE_TTL) -> bytes:
    """One answer RR pointing at the question name (compression pointer to offset 12)."""
    return b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(addr)) + addr


def any_hinfo(ttl: int = 3600) -> bytes:
    """RFC 8482 section 4.2: the answer to ANY is one HINFO record, CPU "RFC8482", OS ""."""
    rdata = b"\x07RFC8482\x00"
    return b"\xc0\x0c" + struct.pack("!HHIH", TYPE_HINFO, 1, ttl, len(rdata)) + rdata


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only error (FORMERR, NOTIMP) for a packet we could not parse; None to drop."""
    if len(data) < 12 or data[2] & 0x80:
        return None  # too short to answer, or a response (never answer those: no loops)
    return data[:2] + bytes((0x80 | (data[2] & 0x79), 0x80 | rcode, 0, 0, 0, 0, 0, 0, 0, 0))


def with_id(resp: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + resp[2:]


MAX_NAME = 255            # octets of a name on the wire (RFC 1035 2.3.4), checked while decoding
MAX_ANSWER_RRS = 64       # answer records read from one response (CNAME chains, addresses)


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name at ``pos``: (lower-case name, position after it). WireError on junk.

    Bounded work whatever the input: a pointer must point strictly backward (before the
    pointer itself, so no loop is possible) and the name may not pass 255 octets, checked
    label by label, so a crafted name costs at most 127 labels and 127 jumps."""
    labels = []
    end = -1
    size = 1                   # the root label
    n = len(data)
    while True:
        if pos >= n:
            raise WireError("name runs past the end")
        ln = data[pos]
        if ln >= 0xC0:
            if pos + 1 >= n:
                raise WireError("truncated pointer")
            if end < 0:
                end = pos + 2
            target = ((ln & 0x3F) << 8) | data[pos + 1]
            if target >= pos:
                raise WireError("compression pointer does not point backward")
            pos = target
            continue
        if ln > 63:
            raise WireError("bad label type")
        if ln == 0:
            pos += 1
            break
        size += ln + 1
        if size > 255:                                   # MAX_NAME (a literal: no global lookup here)
            raise WireError("name longer than 255 octets")
        end_label = pos + 1 + ln
        labels.append(data[pos + 1:end_label])
        pos = end_label
    name = b".".join(labels).lower().decode("latin-1")
    return name, (end if end >= 0 else pos)


def answer_records(resp: bytes, max_rrs: int = MAX_ANSWER_RRS) -> list[tuple[int, int, int]]:
    """(type, rdata offset, rdata length) of the first ``max_rrs`` answer records; stops at the
    first malformed one. Bounded: at most ``max_rrs`` records and one bounded name each."""
    if len(resp) < 12:
        return []
    qd = (resp[4] << 8) | resp[5]
    an = min((resp[6] << 8) | resp[7], max_rrs)
    out: list[tuple[int, int, int]] = []
    if not an or qd > 1:
        return out
    pos = 12
    try:
        if qd:
            _, pos = read_name(resp, pos)
            pos += 4
        for _ in range(an):
            _, pos = read_name(resp, pos)
            if pos + 10 > len(resp):
                break
            rtype = (resp[pos] << 8) | resp[pos + 1]
            rdlen = (resp[pos + 8] << 8) | resp[pos + 9]
            pos += 10
            if pos + rdlen > len(resp):
                break
            out.append((rtype, pos, rdlen))
            pos += rdlen
    except WireError:
        pass
    return out


def answer_cnames(resp: bytes) -> list[str]:
    """The CNAME targets in a response's answer section (slow path: only when there are answers).
    Reads at most MAX_ANSWER_RRS records (bounded work; a real chain is a few links)."""
    if len(resp) < 12:
        return []
    an = (resp[6] << 8) | resp[7]
    if not an or resp[4] or resp[5] > 1:
        return []
    pos = 12
    out = []
    try:
        if resp[5]:
            pos = read_name(resp, pos)[1] + 4
        for _ in range(an if an < MAX_ANSWER_RRS else MAX_ANSWER_RRS):
            pos = read_name(resp, pos)[1]
            rdlen = (resp[pos + 8] << 8) | resp[pos + 9]
            if resp[pos] == 0 and resp[pos + 1] == TYPE_CNAME:
                out.append(read_name(resp, pos + 10)[0])
            pos += 10 + rdlen
    except (WireError, IndexError):
        return out
    return out


def may_have_cname(resp: bytes, pos: int) -> bool:
    """Fast pre-check on a forwarded answer whose question ends at ``pos``: False only when
    every answer RR has a compressed owner name and a type other than CNAME."""
    an = (resp[6] << 8) | resp[7]
    n = len(resp)
    for _ in range(an):
        if pos + 12 > n or resp[pos] < 0xC0:
            return True        # unusual layout: let the full parser decide
        if resp[pos + 2] == 0 and resp[pos + 3] == TYPE_CNAME:
            return True
        pos += 12 + ((resp[pos + 10] << 8) | resp[pos + 11])
    return False


def truncated(resp: bytes) -> bool:
    return len(resp) > 2 and bool(resp[2] & 0x02)


def rcode_of(resp: bytes) -> int:
    return resp[3] & 0x0F if len(resp) > 3 else SERVFAIL


def truncate_for_udp(resp: bytes, limit: int) -> bytes:
    """An answer too large for the client's UDP size: header + question with TC set."""
    if len(resp) <= limit:
        return resp
    try:
        _, pos = read_name(resp, 12)
    except WireError:
        pos = len(resp) - 4
    return resp[:2] + bytes((resp[2] | 0x02, resp[3], 0, 1, 0, 0, 0, 0, 0, 0)) + resp[12:pos + 4]
