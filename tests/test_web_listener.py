"""The HTTP listeners on aiohttp (issue 14, issue 17's "Library"): hostile requests to the
admin API over a real loopback socket. Content-Length must be ASCII digits of bounded
length, the token is checked before the body is read, connections are capped, and a
connection that sends no request head is closed."""

from __future__ import annotations

import asyncio
import json

import pytest

from nocpolicy.control.admin import AdminApi
from nocpolicy.control.commands import Args, Command, CommandRegistry, Invocation
from nocpolicy.web import listener
from nocpolicy.web.plain import HttpServer

TOKEN = "s3cret-token"


@pytest.fixture
async def server():
    async def echo(args: Args, inv: Invocation) -> dict:
        return {"ok": True}

    reg = CommandRegistry()
    reg.register(Command("echo", echo, "echo", mutating=False))
    api = AdminApi(reg, TOKEN)
    srv = HttpServer("admin API", "127.0.0.1", 0, api.handle, before_body=api.authorize, max_connections=4)
    await srv.start()
    yield srv
    await srv.stop()


async def exchange(port: int, raw: bytes, within: float = 10.0) -> tuple[int, dict | str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), within)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def post(length: str | bytes, body: bytes = b"", token: str = TOKEN) -> bytes:
    length = length.encode("latin-1") if isinstance(length, str) else length
    return (b"POST /v1/cmd/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
            + b"\r\nContent-Length: " + length + b"\r\n\r\n" + body)


@pytest.mark.parametrize("length", [b"\xb2", "\u0662".encode(), b"+2", b"0x2", b"1" * 30])
async def test_content_length_must_be_ascii_digits_of_bounded_length(server, length):
    """A superscript two passes str.isdigit() and then breaks int(): the hand-written
    parser raised instead of answering."""
    status, out = await exchange(server.port, post(length, b"{}"))
    assert status in (400, 413) and isinstance(out, dict) and out["error"], out
    status, out = await exchange(server.port, post("2", b"{}"))
    assert status == 200 and out == {"ok": True}


async def test_the_token_is_checked_before_the_body_is_read(server):
    """A wrong token with a large announced body is refused at once; the server does not
    wait for (or buffer) a body from a caller it does not know."""
    t0 = asyncio.get_running_loop().time()
    status, out = await exchange(server.port, post("4000000", token="wrong"), within=8.0)
    assert status == 401 and "bearer token" in out["error"]
    assert asyncio.get_running_loop().time() - t0 < 8.0


async def test_connections_are_capped_and_freed(server):
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while server.connections < 4:
            assert asyncio.get_running_loop().time() < deadline, "connections not seen"
            await asyncio.sleep(0.02)
        status, out = await exchange(server.port, post("2", b"{}"))
        assert status == 503 and "too many connections" in out["error"] and server.refused == 1
    finally:
        for _, w in idle:
            w.close()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        status, _ = await exchange(server.port, post("2", b"{}"))
        if status == 200:
            break
        assert asyncio.get_running_loop().time() < deadline, "slots not freed"
        await asyncio.sleep(0.05)


async def test_a_connection_without_a_request_head_is_closed(monkeypatch):
    monkeypatch.setattr(listener, "HEAD_TIMEOUT", 0.3)
    srv = HttpServer("admin API", "127.0.0.1", 0, AdminApi(CommandRegistry(), TOKEN).handle)
    await srv.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost:")          # a head that never ends
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b"", "closed by the server"
        writer.close()
    finally:
        await srv.stop()
