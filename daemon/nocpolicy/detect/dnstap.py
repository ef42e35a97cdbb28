"""dnstap messages (https://dnstap.info, dnstap.proto) decoded by hand.

Only the fields detection needs are kept: message type, client address and
port, transport, and the wire-format DNS query/response. :func:`encode` builds
the same messages (used by tests and the bench sender).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import protobuf as pb
from .protobuf import DecodeError

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"

# Dnstap.Type
DNSTAP_MESSAGE = 1
# Message.Type
MESSAGE_TYPES = {
    1: "AUTH_QUERY", 2: "AUTH_RESPONSE", 3: "RESOLVER_QUERY", 4: "RESOLVER_RESPONSE",
    5: "CLIENT_QUERY", 6: "CLIENT_RESPONSE", 7: "FORWARDER_QUERY", 8: "FORWARDER_RESPONSE",
    9: "STUB_QUERY", 10: "STUB_RESPONSE", 11: "TOOL_QUERY", 12: "TOOL_RESPONSE",
    13: "UPDATE_QUERY", 14: "UPDATE_RESPONSE",
}
CLIENT_QUERY, CLIENT_RESPONSE = 5, 6
PROTOCOLS = {1: "udp", 2: "tcp", 3: "dot", 4: "doh", 5: "doq", 6: "dnscrypt-udp", 7: "dnscrypt-tcp"}


@dataclass(frozen=True, slots=True)
class TapMessage:
    type: int                      # Message.Type (5 CLIENT_QUERY, 6 CLIENT_RESPONSE, ...)
    identity: bytes = b""
    family: int = 0                # 1 INET, 2 INET6
    protocol: int = 0
    query_address: str | None = None
    query_port: int | None = None
    query_message: bytes | None = None
    response_message: bytes | None = None
    time_sec: int | None = None

    @property
    def type_name(self) -> str:
        return MESSAGE_TYPES.get(self.type, str(self.type))


def _address(raw: bytes) -> str:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    raise DecodeError(f"address of {len(raw)} bytes")


def decode(frame: bytes) -> TapMessage | None:
    """One Dnstap protobuf frame -> TapMessage, or None if it carries no Message."""
    identity = b""
    message = None
    kind = None
    for number, wtype, value in pb.fields(frame):
        if number == 1 and wtype == 2:
            identity = value
        elif number == 15 and wtype == 0:
            kind = value
        elif number == 14 and wtype == 2:
            message = value
    if kind is None:
        raise DecodeError("Dnstap.type missing")
    if kind != DNSTAP_MESSAGE or message is None:
        return None
    m: dict = {}
    for number, _wtype, value in pb.fields(message):
        m[number] = value
    if 1 not in m or not isinstance(m[1], int):
        raise DecodeError("Message.type missing")
    addr = m.get(4)
    return TapMessage(
        type=m[1], identity=identity, family=m.get(2, 0), protocol=m.get(3, 0),
        query_address=_address(addr) if isinstance(addr, bytes) else None,
        query_port=m.get(6) if isinstance(m.get(6), int) else None,
        query_message=m.get(10) if isinstance(m.get(10), bytes) else None,
        response_message=m.get(14) if isinstance(m.get(14), bytes) else None,
        time_sec=m.get(8) if isinstance(m.get(8), int) else m.get(12) if isinstance(m.get(12), int) else None,
    )


def encode(msg_type: int, client: str, port: int, *, query: bytes | None = None,
           response: bytes | None = None, identity: bytes = b"", protocol: int = 1,
           time_sec: int = 0) -> bytes:
    ip = ipaddress.ip_address(client)
    m = (pb.field_varint(1, msg_type) + pb.field_varint(2, 1 if ip.version == 4 else 2)
         + pb.field_varint(3, protocol) + pb.field_bytes(4, ip.packed) + pb.field_varint(6, port))
    if query is not None:
        m += pb.field_varint(8, time_sec) + pb.field_fixed32(9, 0) + pb.field_bytes(10, query)
    if response is not None:
        m += pb.field_varint(12, time_sec) + pb.field_fixed32(13, 0) + pb.field_bytes(14, response)
    out = b""
    if identity:
        out += pb.field_bytes(1, identity)
    return out + pb.field_bytes(14, m) + pb.field_varint(15, DNSTAP_MESSAGE)
