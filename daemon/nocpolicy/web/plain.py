"""The daemon's small HTTP handlers, independent of the HTTP library: a handler takes a
:class:`Request` and returns a :class:`Response` (the admin API, /metrics). :func:`plain_app`
turns one into an aiohttp application: one catch-all route, the caller checked before
the body is read, bodies only with ``Content-Length`` and up to ``max_body`` bytes,
one request per connection."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

from aiohttp import web

from .listener import Listener, error_body

MAX_BODY = 4 * 1024 * 1024
MAX_LENGTH_DIGITS = 10


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]          # names lower-case
    body: bytes
    peer: str

    def json(self):
        if not self.body:
            return {}
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, data, status: int = 200) -> Response:
        return cls(status, (json.dumps(data, ensure_ascii=False, indent=1, default=str) + "\n").encode())

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


Handler = Callable[[Request], Awaitable[Response]]
Gate = Callable[[Request], Response | None]     # an answer before the body is read (e.g. 401), or None


def plain_app(handler: Handler, *, before_body: Gate | None = None, max_body: int = MAX_BODY) -> web.Application:
    async def route(request: web.Request) -> web.StreamResponse:
        head = Request(request.method, request.path, dict(request.query),
                       {k.lower(): v for k, v in request.headers.items()}, b"", _peer(request))
        resp = before_body(head) if before_body else None
        if resp is None:
            body, resp = await _read_body(request, head.headers, max_body)
            if resp is None:
                resp = await handler(replace(head, body=body))
        return _to_aiohttp(resp)

    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", route)
    return app


async def _read_body(request: web.Request, headers: dict[str, str], limit: int) -> tuple[bytes, Response | None]:
    if "transfer-encoding" in headers:
        return b"", _error(400, "Transfer-Encoding is not supported: send the body with Content-Length")
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()) or len(length) > MAX_LENGTH_DIGITS:
        return b"", _error(400, "bad Content-Length")
    if int(length) > limit:
        return b"", _error(413, f"body larger than {limit} bytes")
    return (await request.read() if int(length) else b""), None


def _error(status: int, error: str) -> Response:
    return Response(status, error_body(error))


def _to_aiohttp(resp: Response) -> web.Response:
    out = web.Response(status=resp.status, body=resp.body,
                       headers={"Content-Type": resp.content_type, **resp.headers})
    out.force_close()                  # one request per connection, as before
    return out


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else "?"


class HttpServer(Listener):
    """A listener serving one plain handler (the admin API, the metrics endpoint)."""

    def __init__(self, name: str, host: str, port: int, handler: Handler, *, before_body: Gate | None = None,
                 max_body: int = MAX_BODY, **kw):
        super().__init__(name, host, port, plain_app(handler, before_body=before_body, max_body=max_body), **kw)
