"""DNS messages as seen passively: the question and CNAME targets by hand (every message,
with the DNS guard's wire readers), the addresses with dnslib (slow path, only for
responses to names that are blocked).

Both queries and responses are accepted (a passive observer sees both).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dns.wire import WireError, answer_cnames, read_name

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
    try:
        name, pos = read_name(data, 12)        # (the guard's parser; it also follows pointers)
    except WireError as exc:
        raise MessageError(f"question: {exc}") from None
    if len(name) > 253:
        raise MessageError("name longer than 255 octets")
    if pos + 4 > n:
        raise MessageError("question truncated")
    return Question((data[0] << 8) | data[1], bool(flags & 0x8000), flags & 0xF, name,
                    (data[pos] << 8) | data[pos + 1])


def cname_targets(data: bytes) -> list[str]:
    """CNAME targets in a response's answer section, by hand (cheap; [] when none or unreadable)."""
    if len(data) < 12 or not (data[2] & 0x80) or not (data[6] or data[7] > 1):
        return []           # not a response, or fewer than two answers: no CNAME chain to follow
    return answer_cnames(data)


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
