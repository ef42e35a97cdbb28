"""DNS messages as seen passively: the question by hand (every message), the answers
with dnslib (slow path, only for responses to names that are blocked).

Both queries and responses are accepted (a passive observer sees both).
"""

from __future__ import annotations

from dataclasses import dataclass

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
          33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}


class MessageError(ValueError):
    """Not a DNS message we can read a question from."""


@dataclass(frozen=True, slots=True)
class Question:
    id: int
    response: bool
    rcode: int
    name: str           # lower-case, no trailing dot
    qtype: int


def question(data: bytes) -> Question:
    """Header and first question of a query or response. MessageError on junk."""
    n = len(data)
    if n < 17:
        raise MessageError("shorter than a header and a question")
    if data[4] != 0 or data[5] == 0:
        raise MessageError("no question")
    flags = (data[2] << 8) | data[3]
    pos, labels = 12, []
    while True:
        if pos >= n:
            raise MessageError("name runs past the end")
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln > 63:
            raise MessageError("compression or bad label in the question")
        labels.append(data[pos + 1:pos + 1 + ln])
        pos += 1 + ln
        if pos > 268:
            raise MessageError("name longer than 255 octets")
    if pos + 4 > n:
        raise MessageError("question truncated")
    name = b".".join(labels).lower().decode("latin-1")
    return Question((data[0] << 8) | data[1], bool(flags & 0x8000), flags & 0xF, name,
                    (data[pos] << 8) | data[pos + 1])


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name: (lower-case name, position after it). MessageError on junk."""
    labels, end, jumps, n = [], -1, 0, len(data)
    while True:
        if pos >= n:
            raise MessageError("name runs past the end")
        ln = data[pos]
        if ln >= 0xC0:
            if pos + 1 >= n or jumps > 32:
                raise MessageError("bad compression pointer")
            if end < 0:
                end = pos + 2
            pos, jumps = ((ln & 0x3F) << 8) | data[pos + 1], jumps + 1
            continue
        if ln > 63:
            raise MessageError("bad label")
        if ln == 0:
            return b".".join(labels).lower().decode("latin-1"), (end if end >= 0 else pos + 1)
        labels.append(data[pos + 1:pos + 1 + ln])
        pos += 1 + ln


def cname_targets(data: bytes) -> list[str]:
    """CNAME targets in a response's answer section, by hand (cheap; [] when none or unreadable)."""
    if len(data) < 12 or not (data[2] & 0x80) or not (data[6] or data[7] > 1):
        return []           # not a response, or fewer than two answers: no CNAME chain to follow
    qd, an = (data[4] << 8) | data[5], (data[6] << 8) | data[7]
    out, pos = [], 12
    try:
        for _ in range(qd):
            pos = _name(data, pos)[1] + 4
        for _ in range(an):
            pos = _name(data, pos)[1]
            if pos + 10 > len(data):
                break
            rtype, rdlen = (data[pos] << 8) | data[pos + 1], (data[pos + 8] << 8) | data[pos + 9]
            if rtype == 5:
                out.append(_name(data, pos + 10)[0])
            pos += 10 + rdlen
    except MessageError:
        pass
    return out


def answer_addresses(data: bytes) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(A/AAAA addresses, CNAME targets) in a response's answer section; ((), ()) if unreadable."""
    import dnslib  # slow path only
    try:
        rec = dnslib.DNSRecord.parse(data)
    except (dnslib.DNSError, ValueError, IndexError, KeyError, UnicodeError):
        return (), ()
    addrs, cnames = [], []
    for rr in rec.rr:
        if rr.rtype in (dnslib.QTYPE.A, dnslib.QTYPE.AAAA):
            addrs.append(str(rr.rdata))
        elif rr.rtype == dnslib.QTYPE.CNAME:
            cnames.append(str(rr.rdata).lower().rstrip("."))
    return tuple(dict.fromkeys(addrs)), tuple(cnames)
