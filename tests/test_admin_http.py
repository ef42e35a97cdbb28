"""The admin API over a real loopback socket: auth, routing, argument errors, bad HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest

from nocpolicy.control.admin import AdminApi
from nocpolicy.control.commands import Args, Command, CommandRegistry, Invocation
from nocpolicy.errors import CommandError, NocpolicyError
from nocpolicy.policy.fields import as_bool, as_id, as_str
from nocpolicy.web.plain import MAX_BODY, HttpServer

TOKEN = "s3cret-token"


@pytest.fixture
async def server():
    seen: list = []

    async def optout(args: Args, inv: Invocation) -> dict:
        cid = args.req("customer", as_id)
        on = args.req("on", as_bool)
        reason = args.get("reason", as_str, "")
        args.check()
        if cid == "c404":
            raise CommandError("no customer c404", status=404)
        if cid == "c409":
            raise NocpolicyError("state database is busy")
        seen.append((cid, on, reason, inv.actor, inv.source, inv.request_id))
        return {"customer": cid, "on": on}

    reg = CommandRegistry()
    reg.register(Command("optout.set", optout, "set an opt-out"))
    api = AdminApi(reg, TOKEN)
    srv = HttpServer("admin API", "127.0.0.1", 0, api.handle, before_body=api.authorize)
    await srv.start()
    srv.seen = seen
    yield srv
    await srv.stop()


async def request(port: int, raw: bytes) -> tuple[int, dict | str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


def post(path: str, body: bytes, token: str | None = TOKEN, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def test_commands_need_the_token(server):
    body = json.dumps({"customer": "c1", "on": True}).encode()
    assert (await request(server.port, post("/v1/cmd/optout.set", body, token=None)))[0] == 401
    assert (await request(server.port, post("/v1/cmd/optout.set", body, token="nope")))[0] == 401
    assert (await request(server.port, post("/v1/nowhere", body, token="nope")))[0] == 401
    assert server.seen == []
    status, out = await request(server.port, post("/v1/cmd/optout.set", body, extra="X-Request-Id: r-1\r\n"))
    assert status == 200 and out == {"customer": "c1", "on": True}
    assert server.seen == [("c1", True, "", "admin", "admin-api", "r-1")]


async def test_argument_errors_name_every_field(server):
    body = json.dumps({"customer": "bad id!", "on": "yes", "colour": 1}).encode()
    status, out = await request(server.port, post("/v1/cmd/optout.set", body))
    assert status == 400
    assert "customer: 'bad id!' is not a valid id" in out["error"]
    assert "on: expected true or false" in out["error"]
    assert "colour: unknown key" in out["error"]
    assert out["field"] == "customer"
    status, out = await request(server.port, post("/v1/cmd/optout.set", b"{}"))
    assert status == 400 and "customer: required key is missing" in out["error"]


async def test_refusals_and_routing(server):
    ok = json.dumps({"customer": "c404", "on": True}).encode()
    assert (await request(server.port, post("/v1/cmd/optout.set", ok)))[0] == 404
    busy = json.dumps({"customer": "c409", "on": True}).encode()
    status, out = await request(server.port, post("/v1/cmd/optout.set", busy))
    assert status == 409 and out["error"] == "state database is busy"
    status, out = await request(server.port, post("/v1/cmd/no.such", b"{}"))
    assert status == 404 and "known: optout.set" in out["error"]
    assert (await request(server.port, post("/v1/cmd/optout.set", b"not json")))[0] == 400
    assert (await request(server.port, post("/v1/cmd/optout.set", b"[1, 2]")))[0] == 400
    get = f"GET /v1/cmd/optout.set HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    assert (await request(server.port, get))[0] == 405
    status, out = await request(server.port, f"GET /v1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                                .encode())
    assert status == 200 and out["commands"][0]["name"] == "optout.set"


async def test_bad_http_is_answered_not_crashed(server):
    assert (await request(server.port, b"NONSENSE\r\n\r\n"))[0] == 400
    neg = f"POST /v1/cmd/optout.set HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: -1\r\n\r\n"
    status, out = await request(server.port, neg.encode())
    assert status == 400 and out["error"] == "bad Content-Length"
    chunked = f"POST /v1/cmd/optout.set HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, out = await request(server.port, chunked.encode() + b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 400 and "Content-Length" in out["error"]
    huge = f"POST /v1/cmd/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    assert (await request(server.port, huge.encode()))[0] == 413
    header_flood = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n"
    assert (await request(server.port, header_flood))[0] == 413
    # Still serving after all that.
    body = json.dumps({"customer": "c1", "on": False}).encode()
    assert (await request(server.port, post("/v1/cmd/optout.set", body)))[0] == 200
