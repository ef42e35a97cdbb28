"""A small HTTP/1.1 server on asyncio streams, enough for /metrics and the admin API.

Only loopback by default; bounded header and body sizes; one request per
connection (``Connection: close``) keeps it simple and robust.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

log = logging.getLogger(__name__)

MAX_HEADER = 16 * 1024
MAX_BODY = 4 * 1024 * 1024
REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
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


class HttpServer:
    def __init__(self, name: str, host: str, port: int, handler: Handler):
        self.name, self.host, self.port, self.handler = name, host, port, handler
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_HEADER, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s listening on http://%s:%d", self.name, _fmt(self.host), self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            try:
                req = await asyncio.wait_for(_read_request(reader, peer), timeout=10)
            except _HttpError as exc:
                resp = Response.of_json({"error": str(exc)}, exc.status)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                return
            else:
                try:
                    resp = await self.handler(req)
                except Exception as exc:  # a bug in a handler must not take the server down
                    log.exception("%s: %s %s failed", self.name, req.method, req.path)
                    resp = Response.of_json({"error": f"internal error: {exc}"}, 500)
            head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}",
                    f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
                    "Connection: close", *(f"{k}: {v}" for k, v in resp.headers.items())]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


async def _read_request(reader: asyncio.StreamReader, peer) -> Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _HttpError(413, "request header too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ", 2)
    except ValueError:
        raise _HttpError(400, "malformed request line") from None
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "transfer-encoding" in headers:
        raise _HttpError(400, "Transfer-Encoding is not supported: send the body with Content-Length")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise _HttpError(400, "bad Content-Length")
    if int(length) > MAX_BODY:
        raise _HttpError(413, f"body larger than {MAX_BODY} bytes")
    body = await reader.readexactly(int(length)) if int(length) else b""
    url = urlsplit(target)
    return Request(method.upper(), url.path, dict(parse_qsl(url.query)), headers, body,
                   f"{peer[0]}:{peer[1]}" if peer else "?")


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host
