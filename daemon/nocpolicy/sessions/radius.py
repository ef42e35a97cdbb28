"""RADIUS accounting (RFC 2866, 2869, 4818) as pure functions over bytes.

Packet coding is pyrad's; this module decides what a request means for the
session book and maps pyrad's errors to :class:`Rejected` with a reason that
names the problem (and a short ``why`` used as a metric label).
"""

from __future__ import annotations

import io
import ipaddress
import struct
from dataclasses import dataclass

from pyrad import packet as rp
from pyrad.dictionary import Dictionary

from ..policy.sessions import CustomerFrom
from .model import Event, Net, SessionInfo, net_of

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


def dictionary() -> Dictionary:
    return Dictionary(io.StringIO(DICTIONARY))


class Rejected(Exception):
    """A request that is dropped: ``why`` is the metric label, the message says more."""

    def __init__(self, why: str, message: str):
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class Request:
    status: str                # start | stop | interim | accounting-on | accounting-off
    event: Event
    reply: bytes               # the Accounting-Response to send once the event is durable


# attribute code -> (name, type), from the dictionary above
TYPES = {int(parts[2]): (parts[1], parts[3]) for parts in
         (line.split() for line in DICTIONARY.splitlines()) if len(parts) == 4}


def _check_lengths(pkt: rp.AcctPacket) -> None:
    """RFC 2865 section 5 lengths of the attributes nocpolicy knows."""
    for key, values in pkt.items():
        known = TYPES.get(key) if isinstance(key, int) else None
        if known is None:
            continue
        name, kind = known
        for v in values:
            n = _FIXED.get(kind)
            if (n is not None and len(v) != n) or (kind == "ipv6prefix" and not 2 <= len(v) <= 18) \
                    or (kind == "string" and not v):
                raise Rejected("bad-attribute", f"attribute {name} has length {len(v)}")


def _one(pkt, name: str, default=None):
    v = pkt.get(name)
    return v[0] if v else default


def decode(data: bytes, secret: bytes, d: Dictionary) -> rp.AcctPacket:
    """Decode and authenticate an Accounting-Request (raises Rejected)."""
    if len(data) < 20:
        raise Rejected("malformed", f"truncated packet ({len(data)} bytes)")
    if len(data) > MAX_PACKET:
        raise Rejected("malformed", f"oversized packet ({len(data)} bytes, at most {MAX_PACKET})")
    length = struct.unpack_from("!H", data, 2)[0]
    if length > len(data):
        raise Rejected("malformed", f"truncated packet: header says {length} bytes, got {len(data)}")
    try:
        pkt = rp.AcctPacket(packet=data, secret=secret, dict=d)
    except (rp.PacketError, ValueError, struct.error, IndexError, KeyError) as exc:
        raise Rejected("malformed", f"cannot decode: {exc}") from None
    if pkt.code != rp.AccountingRequest:
        raise Rejected("unsupported", f"code {pkt.code} is not an Accounting-Request")
    if not pkt.VerifyAcctRequest():
        raise Rejected("bad-authenticator", "Request Authenticator does not verify (wrong shared secret?)")
    _check_lengths(pkt)
    return pkt


def _prefix(raw) -> Net | None:
    if raw is None:
        return None
    return net_of(ipaddress.ip_network(raw, strict=False))


def nas_name(pkt: rp.AcctPacket, client: str, source: str) -> str:
    """Sessions are keyed by NAS: the client id plus the NAS-Identifier (or NAS address)."""
    try:
        ident = _one(pkt, "NAS-Identifier") or _one(pkt, "NAS-IP-Address") or _one(pkt, "NAS-IPv6-Address")
    except (ValueError, struct.error, UnicodeDecodeError) as exc:
        raise Rejected("bad-attribute", f"cannot read the NAS identity: {exc}") from None
    return f"{client}/{ident or source}"


def interpret(pkt: rp.AcctPacket, nas: str, now: float, default_interval: float,
              customer_from: CustomerFrom) -> Request:
    """What an authenticated request means (raises Rejected for a useless one)."""
    try:
        status = STATUS.get(_one(pkt, "Acct-Status-Type"))
        sid = _one(pkt, "Acct-Session-Id", "")
        login = _one(pkt, "User-Name", "")
        klass = _one(pkt, "Class", b"").decode("utf-8", "replace")
        calling = _one(pkt, "Calling-Station-Id", "")
        ts = _one(pkt, "Event-Timestamp")
        delay = _one(pkt, "Acct-Delay-Time", 0)
        addrs = [_prefix(_one(pkt, "Framed-IPv6-Prefix")), _prefix(_one(pkt, "Delegated-IPv6-Prefix"))]
        v4 = _one(pkt, "Framed-IP-Address")
        elapsed = _one(pkt, "Acct-Session-Time")
        interval = _one(pkt, "Acct-Interim-Interval") or default_interval
        cause = TERMINATE.get(_one(pkt, "Acct-Terminate-Cause"), "")
    except (ValueError, struct.error, UnicodeDecodeError, KeyError) as exc:
        raise Rejected("bad-attribute", f"cannot read an attribute: {exc}") from None
    if status is None:
        raise Rejected("unsupported", "missing or unknown Acct-Status-Type")
    when = float(ts) if ts is not None else now - delay
    if v4 is not None:
        addrs.insert(0, net_of(f"{v4}/32"))
    value = {"User-Name": login, "Class": klass, "Calling-Station-Id": calling}[customer_from.attribute]
    info = SessionInfo("radius", nas, sid, customer_from.extract(value), login, calling, klass,
                       tuple(a for a in addrs if a is not None), float(interval))
    if status in ("accounting-on", "accounting-off"):
        return Request(status, Event("nas-off", info, when, reason=status), _reply(pkt))
    if not sid:
        raise Rejected("bad-attribute", f"{status} without Acct-Session-Id")
    kind = {"start": "start", "interim": "update", "stop": "stop"}[status]
    return Request(status, Event(kind, info, when, float(elapsed) if elapsed is not None else None,
                                 cause), _reply(pkt))


def _reply(pkt: rp.AcctPacket) -> bytes:
    return pkt.CreateReply().ReplyPacket()
