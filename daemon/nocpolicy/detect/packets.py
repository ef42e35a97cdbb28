"""Captured frames -> DNS observations (pure): Ethernet, IPv4/IPv6, UDP/TCP, DNS question.

Also the classic-BPF program that keeps only DNS in the kernel (``udp or tcp,
port P`` over Ethernet, IPv4 non-fragments and IPv6 without extension headers),
written by hand because neither tcpdump nor libpcap is needed to compile it.
"""

from __future__ import annotations

import ipaddress
import struct

from .message import MessageError, question
from .observation import Observation

ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0800, 0x86DD, 0x8100
UDP, TCP = 17, 6
MAX_MESSAGES = 16         # DNS messages read from one TCP segment (bounded work per frame)


def bpf_program(port: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: accept Ethernet UDP/TCP frames with src or dst ``port``."""
    LDH, LDB, JEQ, JSET, LDXB_MSH, LDH_IND, RET = 0x28, 0x30, 0x15, 0x45, 0xB1, 0x48, 0x06
    ACC, DROP = 20, 21

    def j(pc, code, k, jt, jf):
        return (code, jt - pc - 1, jf - pc - 1, k)

    return [
        (LDH, 0, 0, 12),                        # 0 ethertype
        j(1, JEQ, ETH_IPV6, 2, 9),
        (LDB, 0, 0, 20),                        # 2 IPv6 next header
        j(3, JEQ, UDP, 5, 4),
        j(4, JEQ, TCP, 5, DROP),
        (LDH, 0, 0, 54),                        # 5 source port
        j(6, JEQ, port, ACC, 7),
        (LDH, 0, 0, 56),                        # 7 destination port
        j(8, JEQ, port, ACC, DROP),
        j(9, JEQ, ETH_IPV4, 10, DROP),
        (LDB, 0, 0, 23),                        # 10 IPv4 protocol
        j(11, JEQ, UDP, 13, 12),
        j(12, JEQ, TCP, 13, DROP),
        (LDH, 0, 0, 20),                        # 13 flags + fragment offset
        j(14, JSET, 0x1FFF, DROP, 15),
        (LDXB_MSH, 0, 0, 14),                   # 15 x = IPv4 header length
        (LDH_IND, 0, 0, 14),                    # 16 source port
        j(17, JEQ, port, ACC, 18),
        (LDH_IND, 0, 0, 16),                    # 18 destination port
        j(19, JEQ, port, ACC, DROP),
        (RET, 0, 0, 0x40000),                   # 20 accept
        (RET, 0, 0, 0),                         # 21 drop
    ]


def dns_payloads(frame: bytes, port: int = 53):
    """(src ip, src port, dst ip, dst port, [DNS messages]) of one Ethernet frame, or None."""
    if len(frame) < 14:
        return None
    etype = (frame[12] << 8) | frame[13]
    off = 14
    if etype == ETH_VLAN and len(frame) >= 18:
        etype = (frame[16] << 8) | frame[17]
        off = 18
    if etype == ETH_IPV4:
        if len(frame) < off + 20:
            return None
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        if (struct.unpack_from(">H", frame, off + 6)[0] & 0x1FFF) or ihl < 20:
            return None
        total = struct.unpack_from(">H", frame, off + 2)[0]
        end = min(len(frame), off + total)
        src = str(ipaddress.IPv4Address(frame[off + 12:off + 16]))
        dst = str(ipaddress.IPv4Address(frame[off + 16:off + 20]))
        off += ihl
    elif etype == ETH_IPV6:
        if len(frame) < off + 40:
            return None
        proto = frame[off + 6]
        end = min(len(frame), off + 40 + struct.unpack_from(">H", frame, off + 4)[0])
        src = str(ipaddress.IPv6Address(frame[off + 8:off + 24]))
        dst = str(ipaddress.IPv6Address(frame[off + 24:off + 40]))
        off += 40
    else:
        return None
    if proto == UDP:
        if end < off + 8:
            return None
        sport, dport = struct.unpack_from(">HH", frame, off)
        msgs = [bytes(frame[off + 8:end])]
    elif proto == TCP:
        if end < off + 20:
            return None
        sport, dport = struct.unpack_from(">HH", frame, off)
        data = frame[off + ((frame[off + 12] >> 4) * 4):end]
        msgs = []
        pos = 0
        # whole DNS messages at the start of a segment (no reassembly across segments)
        while pos + 2 <= len(data) and len(msgs) < MAX_MESSAGES:
            ln = (data[pos] << 8) | data[pos + 1]
            if ln == 0 or pos + 2 + ln > len(data):
                break
            msgs.append(bytes(data[pos + 2:pos + 2 + ln]))
            pos += 2 + ln
    else:
        return None
    if sport != port and dport != port:
        return None
    return src, sport, dst, dport, msgs


def observations(frame: bytes, port: int = 53) -> list[Observation]:
    """The DNS lookups in one frame: queries to ``port`` and responses from it."""
    parsed = dns_payloads(frame, port)
    if parsed is None:
        return []
    src, sport, dst, dport, msgs = parsed
    out = []
    for msg in msgs:
        try:
            q = question(msg)
        except MessageError:
            continue
        if q.response and sport == port:
            out.append(Observation("capture", dst, q.name, q.qtype, True, dport, q.id, msg, server=src))
        elif not q.response and dport == port:
            out.append(Observation("capture", src, q.name, q.qtype, False, sport, q.id, server=dst))
    return out
