"""dnstap wire formats: the protobuf reader, Frame Streams, and the dnstap listener on a real socket."""

from __future__ import annotations

import asyncio

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nocpolicy.detect import dnstap, framestream
from nocpolicy.detect import protobuf as pb
from nocpolicy.detect.framestream import FrameError, Receiver
from nocpolicy.detect.message import MessageError, answer_addresses, cname_targets, question
from nocpolicy.detect.tapserver import TapServer

QUERY = dnslib.DNSRecord.question("Evil.Example", "A").pack()


def test_varints_round_trip():
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        assert pb.read_varint(pb.varint(n), 0) == (n, len(pb.varint(n)))
    with pytest.raises(pb.DecodeError):
        pb.read_varint(b"\x80\x80", 0)
    with pytest.raises(pb.DecodeError):
        list(pb.fields(b"\x0b"))          # wire type 3 (group)
    with pytest.raises(pb.DecodeError):
        list(pb.fields(pb.varint(2 << 3 | 2) + pb.varint(10) + b"abc"))


def test_dnstap_round_trip_v4_v6():
    frame = dnstap.encode(dnstap.CLIENT_QUERY, "192.0.2.10", 5353, query=QUERY, identity=b"res1")
    m = dnstap.decode(frame)
    assert (m.type, m.type_name, m.identity, m.query_address, m.query_port, m.family) == \
        (5, "CLIENT_QUERY", b"res1", "192.0.2.10", 5353, 1)
    assert m.query_message == QUERY and m.response_message is None
    m = dnstap.decode(dnstap.encode(dnstap.CLIENT_RESPONSE, "2001:db8::7", 1, response=QUERY, protocol=2))
    assert (m.query_address, m.family, m.protocol, m.response_message) == ("2001:db8::7", 2, 2, QUERY)
    # a Dnstap that is not a MESSAGE, and one without a type
    assert dnstap.decode(pb.field_varint(15, 2)) is None
    with pytest.raises(pb.DecodeError):
        dnstap.decode(pb.field_bytes(1, b"x"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_never_crash(data):
    for fn in (dnstap.decode, question):
        try:
            fn(data)
        except (pb.DecodeError, MessageError):
            pass
    answer_addresses(data)
    cname_targets(b"\x00\x00\x81\x80" + data)
    rx = Receiver(dnstap.CONTENT_TYPE)
    try:
        rx.feed(data)
    except FrameError:
        pass


def handshake(rx: Receiver) -> None:
    out = rx.feed(framestream.control(framestream.READY, (dnstap.CONTENT_TYPE,)))
    assert framestream.parse_control(out.reply[8:]) == (framestream.ACCEPT, [dnstap.CONTENT_TYPE])
    assert rx.feed(framestream.control(framestream.START, (dnstap.CONTENT_TYPE,))).reply == b""


def test_frame_streams_handshake_byte_by_byte():
    rx = Receiver(dnstap.CONTENT_TYPE)
    handshake(rx)
    stream = framestream.data(b"one") + framestream.data(b"two") + framestream.control(framestream.STOP)
    frames, reply, finished = [], b"", False
    for i in range(len(stream)):                       # arbitrary fragmentation
        out = rx.feed(stream[i:i + 1])
        frames += out.frames
        reply += out.reply
        finished = finished or out.finished
    assert frames == [b"one", b"two"]
    assert finished and framestream.parse_control(reply[8:]) == (framestream.FINISH, [])


@pytest.mark.parametrize("stream, why", [
    (framestream.data(b"early"), "before START"),
    (framestream.control(framestream.READY, (b"protobuf:other",)), "offers"),
    (framestream.control(framestream.START) + framestream.control(framestream.START), "unexpected"),
    (b"\x00\x00\x00\x00\x00\x01\x00\x00", "control frame"),
    (b"\x7f\xff\xff\xff", "limit"),
])
def test_frame_streams_violations(stream, why):
    with pytest.raises(FrameError, match=why):
        Receiver(dnstap.CONTENT_TYPE).feed(stream)


async def _send(path, payload: bytes, *, expect_reply: bool = True) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(framestream.control(framestream.READY, (dnstap.CONTENT_TYPE,)))
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(512), 5) if expect_reply else b""
    writer.write(framestream.control(framestream.START, (dnstap.CONTENT_TYPE,)) + payload)
    await writer.drain()
    fin = await asyncio.wait_for(reader.read(512), 5)
    writer.close()
    await writer.wait_closed()
    return reply + fin


async def test_tap_server_survives_bad_senders(tmp_path):
    got = []
    path = str(tmp_path / "tap.sock")
    srv = TapServer(path, got.append)
    await srv.start()
    try:
        good = dnstap.encode(dnstap.CLIENT_QUERY, "192.0.2.1", 1000, query=QUERY)
        other = dnstap.encode(3, "192.0.2.1", 1000, query=QUERY)          # RESOLVER_QUERY: ignored
        junk = b"\xff\xff\xff"
        payload = b"".join(framestream.data(x) for x in (good, other, junk, good))
        reply = await _send(path, payload + framestream.control(framestream.STOP))
        assert reply.startswith(framestream.control(framestream.ACCEPT, (dnstap.CONTENT_TYPE,)))
        assert reply.endswith(framestream.control(framestream.FINISH))
        assert [m.query_address for m in got] == ["192.0.2.1", "192.0.2.1"]
        assert (srv.frames, srv.ignored, srv.errors) == (4, 1, 1)
        # a sender that breaks the protocol is closed; the listener keeps serving
        r, w = await asyncio.open_unix_connection(path)
        w.write(framestream.data(good))
        await w.drain()
        assert await asyncio.wait_for(r.read(100), 5) == b""
        w.close()
        reply = await _send(path, framestream.data(good) + framestream.control(framestream.STOP))
        # frames are decoded in the parser thread: the third message may land just after FINISH
        for _ in range(1000):                      # at most 10 s
            if len(got) >= 3:
                break
            await asyncio.sleep(0.01)
        assert len(got) == 3 and srv.errors == 2
    finally:
        await srv.stop()
    assert not (tmp_path / "tap.sock").exists()
