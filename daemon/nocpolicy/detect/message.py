"""DNS messages as seen passively, by hand with the DNS guard's wire readers: the
question (every message), CNAME targets and answer addresses (responses only).

Both queries and responses are accepted (a passive observer sees both). The work per
message is bounded whatever it holds: names are read with backward pointers only and
at most 255 octets (dns/wire.read_name), at most MAX_ANSWER_RRS answer records are read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..dns.wire import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    WireError,
    answer_cnames,
    answer_records,
    read_name,
)

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
    if len(data) < 12 or not (data[2] & 0x80):
        return (), ()
    addrs, cnames = [], []
    for rtype, pos, rdlen in answer_records(data):
        if rtype == TYPE_A and rdlen == 4:
            addrs.append(str(ipaddress.IPv4Address(bytes(data[pos:pos + 4]))))
        elif rtype == TYPE_AAAA and rdlen == 16:
            addrs.append(str(ipaddress.IPv6Address(bytes(data[pos:pos + 16]))))
        elif rtype == TYPE_CNAME:
            try:
                cnames.append(read_name(data, pos)[0])
            except WireError:
                break
    return tuple(dict.fromkeys(addrs)), tuple(cnames)
