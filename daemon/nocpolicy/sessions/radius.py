"""RADIUS accounting (RFC 2866, 2869, 4818) as pure functions over bytes.

Packet coding is pyrad's; this module decides what a request means for the
session book and maps pyrad's errors to :class:`Rejected` with a reason that
names the problem (and a short ``why`` used as a metric label).
"""

from __future__ import annotations

import io
import ipaddress
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from pyrad import packet as rp
from pyrad import tools
from pyrad.dictionary import Dictionary

from ..policy.sessions import CustomerFrom
from .model import Event, SessionInfo, net_of

MAX_PACKET = 4096          # RFC 2865 section 3
STATUS = {1: "start", 2: "stop", 3: "interim", 7: "accounting-on", 8: "accounting-off"}

# The attributes nocpolicy reads (RFC 2865/2866/2869/3162/4818), for pyrad's decoder.
DICTIONARY = """
ATTRIBUTE User-Name 1 string
ATTRIBUTE NAS-IP-Address 4 ipaddr
ATTRIBUTE NAS-Port 5 integer
ATTRIBUTE Framed-IP-Address 8 ipaddr
ATTRIBUTE Class 25 octets
ATTRIBUTE Session-Timeout 27 integer
ATTRIBUTE Called-Station-Id 30 string
ATTRIBUTE Calling-Station-Id 31 string
ATTRIBUTE NAS-Identifier 32 string
ATTRIBUTE Proxy-State 33 octets
ATTRIBUTE Acct-Status-Type 40 integer
ATTRIBUTE Acct-Delay-Time 41 integer
ATTRIBUTE Acct-Session-Id 44 string
ATTRIBUTE Acct-Session-Time 46 integer
ATTRIBUTE Acct-Terminate-Cause 49 integer
ATTRIBUTE Event-Timestamp 55 date
ATTRIBUTE NAS-Port-Type 61 integer
ATTRIBUTE Acct-Interim-Interval 85 integer
ATTRIBUTE NAS-IPv6-Address 95 ipv6addr
ATTRIBUTE Framed-IPv6-Prefix 97 ipv6prefix
ATTRIBUTE Delegated-IPv6-Prefix 123 ipv6prefix
"""

TERMINATE = {1: "user-request", 2: "lost-carrier", 3: "lost-service", 4: "idle-timeout",
             5: "session-timeout", 6: "admin-reset", 7: "admin-reboot", 8: "port-error",
             9: "nas-error", 10: "nas-request", 11: "nas-reboot", 15: "service-unavailable"}
_FIXED = {"ipaddr": 4, "integer": 4, "date": 4, "ipv6addr": 16}
_KIND = {"start": "start", "interim": "update", "stop": "stop"}     # status -> the book's event kind


def dictionary() -> Dictionary:
    return Dictionary(io.StringIO(DICTIONARY))


class Rejected(Exception):
    """A request that is dropped: ``why`` is the metric label, the message says more."""

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why = why


class Request(NamedTuple):
    status: str                # start | stop | interim | accounting-on | accounting-off
    event: Event
    reply: bytes               # the Accounting-Response to send once the event is durable


# attribute code -> (name, type), from the dictionary above
TYPES = {int(parts[2]): (parts[1], parts[3]) for parts in
         (line.split() for line in DICTIONARY.splitlines()) if len(parts) == 4}


# pyrad's decoder of each type (what ``tools.DecodeAttr`` dispatches to, looked up once)
_DECODERS = {"string": tools.DecodeString, "octets": tools.DecodeOctets, "integer": tools.DecodeInteger,
             "ipaddr": tools.DecodeAddress, "date": tools.DecodeDate, "ipv6addr": tools.DecodeIPv6Address,
             "ipv6prefix": tools.DecodeIPv6Prefix}
# the lengths RFC 2865 section 5 allows a value of each type (an attribute's Length octet
# allows at most 253 octets of value): fixed, 2-18 for an IPv6 prefix, a string not empty
_LENGTHS = {"ipv6prefix": (2, 18), "string": (1, 253)}


def _reader(name: str, kind: str, dec) -> tuple:
    n = _FIXED.get(kind)
    return (name, *((n, n) if n is not None else _LENGTHS.get(kind, (0, 253))), dec)


# attribute code -> (name, shortest, longest value, pyrad's decoder)
_READ = {code: _reader(name, kind, _DECODERS[kind]) for code, (name, kind) in TYPES.items()}
# the same, but Framed-IP-Address as an int: RFC 2865 section 5 codes an address and an integer
# alike (32 bits, most significant octet first), so pyrad's DecodeInteger reads it; DecodeAddress
# builds an ipaddress object and its text, which the listener turned back into an int
FRAMED_IP = 8
_READ_INT = {**_READ, FRAMED_IP: (*_READ[FRAMED_IP][:3], tools.DecodeInteger)}


def attributes(pkt: rp.AcctPacket, *, framed_int: bool = False) -> dict:
    """The first value of each attribute nocpolicy reads, decoded by pyrad's type decoders
    (one pass over the raw attributes), after checking RFC 2865 section 5 lengths.
    ``framed_int``: Framed-IP-Address as an int (the listener's form), else as text."""
    out = {}
    read = _READ_INT if framed_int else _READ
    for key, values in OrderedDict.items(pkt):
        known = read.get(key) if type(key) is int else None
        if known is None:
            continue
        name, lo, hi, dec = known
        for v in values:
            if not lo <= len(v) <= hi:
                raise Rejected("bad-attribute", f"attribute {name} has length {len(v)}")
        try:
            out[name] = dec(values[0])
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise Rejected("bad-attribute", f"cannot read attribute {name}: {exc}") from None
    return out


def _check_framing(data: bytes, length: int) -> None:
    """Every attribute's Length must end inside the packet's Length (RFC 2865 section 5):
    pyrad would cut a value that runs past it short without a word."""
    i = 20
    while i < length:
        n = data[i + 1] if i + 1 < length else 0
        if n < 2 or i + n > length:
            raise Rejected("malformed", f"cannot decode: attribute {data[i]} at octet {i} runs past the "
                                        f"packet's Length ({length}) or is shorter than 2")
        i += n


def _check(data: bytes) -> None:
    """What pyrad does not refuse itself (raises Rejected)."""
    if len(data) < 20:
        raise Rejected("malformed", f"truncated packet ({len(data)} bytes)")
    if len(data) > MAX_PACKET:
        raise Rejected("malformed", f"oversized packet ({len(data)} bytes, at most {MAX_PACKET})")
    length = struct.unpack_from("!H", data, 2)[0]
    if length > len(data):
        raise Rejected("malformed", f"truncated packet: header says {length} bytes, got {len(data)}")
    _check_framing(data, length)


def _verified(pkt: rp.AcctPacket) -> rp.AcctPacket:
    if pkt.code != rp.AccountingRequest:
        raise Rejected("unsupported", f"code {pkt.code} is not an Accounting-Request")
    if not pkt.VerifyAcctRequest():
        raise Rejected("bad-authenticator", "Request Authenticator does not verify (wrong shared secret?)")
    return pkt


_ERRORS = (rp.PacketError, ValueError, struct.error, IndexError, KeyError)


def decode(data: bytes, secret: bytes, d: Dictionary | None = None) -> rp.AcctPacket:
    """Decode (pyrad) and authenticate an Accounting-Request (raises Rejected).

    Decoded without a dictionary unless ``d`` is given (pyrad then keys attributes by their
    codes, which is all :func:`attributes` and the reply need): with one, pyrad looks every
    attribute up to see if it is a TLV, which is 40 % of its decode time."""
    _check(data)
    try:
        pkt = rp.AcctPacket(code=data[0], id=data[1], secret=secret, dict=d, packet=data)
    except _ERRORS as exc:
        raise Rejected("malformed", f"cannot decode: {exc}") from None
    return _verified(pkt)


class _Packet(rp.AcctPacket):
    """pyrad's AcctPacket, decoded by pyrad. ``DecodePacket`` files each attribute with
    ``setdefault(code, [])``; on a subclass of OrderedDict that calls pyrad's ``__contains__``
    and ``__setitem__``, which for an int key (an attribute code) only check the key's type
    and go to the OrderedDict: here the int key goes there at once (two Python calls less per
    attribute). Any other key takes pyrad's way."""

    def setdefault(self, key, default=None):
        if type(key) is not int:
            return OrderedDict.setdefault(self, key, default)
        if OrderedDict.__contains__(self, key):
            return OrderedDict.__getitem__(self, key)
        OrderedDict.__setitem__(self, key, default)
        return default


class Decoder:
    """:func:`decode` into one reused pyrad packet (``DecodePacket`` replaces its code, id,
    authenticator and attributes): a third cheaper than a new packet a request. The packet
    returned is valid until the next call; the listener reads it and builds the reply first."""

    def __init__(self):
        self._pkt = _Packet(id=0)

    def decode(self, data: bytes, secret: bytes) -> rp.AcctPacket:
        _check(data)
        pkt = self._pkt
        pkt.secret, pkt.message_authenticator = secret, None
        try:
            pkt.DecodePacket(data)
        except _ERRORS as exc:
            raise Rejected("malformed", f"cannot decode: {exc}") from None
        return _verified(pkt)


def nas_name(attrs: dict, client: str, source: str) -> str:
    """Sessions are keyed by NAS: the client id plus the NAS-Identifier (or NAS address)."""
    ident = attrs.get("NAS-Identifier") or attrs.get("NAS-IP-Address") or attrs.get("NAS-IPv6-Address")
    return sys.intern(f"{client}/{ident or source}")     # one string per NAS, shared by its sessions


def reply(pkt: rp.AcctPacket) -> bytes:
    """The Accounting-Response to ``pkt`` (with its Proxy-States), coded by pyrad."""
    return pkt.CreateReply().ReplyPacket()


class Replier:
    """:func:`reply` into one reused pyrad Accounting-Response: ``CreateReply`` builds a new
    packet a request (pyrad's ``Packet.__init__``: two thirds of the reply's cost). Here the
    reply packet takes the request's Identifier, Request Authenticator and secret, and
    pyrad's own ``_PrepareReply`` (what ``CreateReply`` calls) copies the Proxy-States; pyrad's
    ``ReplyPacket`` codes it. Only for Accounting-Requests (what :class:`Decoder` lets through:
    a Status-Server reply would need a Message-Authenticator, which CreateReply adds)."""

    def __init__(self):
        self._pkt = rp.AcctPacket(code=rp.AccountingResponse, id=0)

    def __call__(self, pkt: rp.AcctPacket) -> bytes:
        r = self._pkt
        OrderedDict.clear(r)
        r.id, r.secret, r.authenticator = pkt.id, pkt.secret, pkt.authenticator
        pkt._PrepareReply(r, {})
        return r.ReplyPacket()


def interpret(pkt: rp.AcctPacket, attrs: dict, nas: str, now: float, default_interval: float,
              customer_from: CustomerFrom, encode_reply: Callable[[rp.AcctPacket], bytes] = reply) -> Request:
    """What an authenticated request means (raises Rejected for a useless one).
    ``encode_reply`` codes the Accounting-Response (:func:`reply`, or a :class:`Replier`)."""
    a = attrs
    status = STATUS.get(a.get("Acct-Status-Type"))
    if status is None:
        raise Rejected("unsupported", "missing or unknown Acct-Status-Type")
    sid, login, calling = a.get("Acct-Session-Id", ""), a.get("User-Name", ""), a.get("Calling-Station-Id", "")
    klass = a.get("Class", b"").decode("utf-8", "replace")
    ts, elapsed = a.get("Event-Timestamp"), a.get("Acct-Session-Time")
    when = float(ts) if ts is not None else now - a.get("Acct-Delay-Time", 0)
    addrs = []
    framed = a.get("Framed-IP-Address")
    if framed is not None:
        addrs.append((4, framed if type(framed) is int else int.from_bytes(socket.inet_aton(framed), "big"), 32))
    for name in ("Framed-IPv6-Prefix", "Delegated-IPv6-Prefix"):
        if name in a:
            addrs.append(net_of(ipaddress.ip_network(a[name], strict=False)))
    attr = customer_from.attribute
    value = login if attr == "User-Name" else klass if attr == "Class" else calling
    info = SessionInfo("radius", nas, sid, customer_from.extract(value), login, calling, klass,
                       tuple(addrs), float(a.get("Acct-Interim-Interval") or default_interval))
    if status in ("accounting-on", "accounting-off"):
        return Request(status, Event("nas-off", info, when, reason=status), encode_reply(pkt))
    if not sid:
        raise Rejected("bad-attribute", f"{status} without Acct-Session-Id")
    kind = _KIND[status]
    return Request(status, Event(kind, info, when, float(elapsed) if elapsed is not None else None,
                                 TERMINATE.get(a.get("Acct-Terminate-Cause"), "")), encode_reply(pkt))
