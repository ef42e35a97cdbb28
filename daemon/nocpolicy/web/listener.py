"""One HTTP listener: an aiohttp ``web.Application`` on one address, with the limits every
listener of the daemon shares.

* **Connections.** At most ``max_connections`` at once; one more is answered 503 and
  closed at once. A connection that has not sent a whole request head within
  ``HEAD_TIMEOUT`` seconds is closed (slow senders cannot hold the slots).
* **Request heads.** Parsed by aiohttp (llhttp): request line and each header at most
  8 KiB, at most 64 headers. A malformed request is answered ``400`` (``413`` for a
  head over the limits) with a JSON body ``{"error": ...}``; ``Content-Length`` must
  be ASCII digits (bounded by the body limit of each route).
* **Bodies** are read by the route, only after it has checked the caller (the admin
  API checks the token first), and only up to the route's limit.

The listener knows nothing about routes: :mod:`.plain` adapts the daemon's small
transport-free handlers (admin API, metrics); a customer-facing page (issue 17) is
its own ``web.Application`` (aiohttp_jinja2 templates) on its own ``Listener``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
HEAD_TIMEOUT = 10.0
KEEPALIVE = 5.0
MAX_LINE = 8190
MAX_HEADERS = 64
LINGER = 1.0          # after refusing a body (401, 413): read what the client still sends, this long at most


def error_body(error: str) -> bytes:
    return (json.dumps({"error": error}) + "\n").encode()


class _Handler(web.RequestHandler):
    """aiohttp's connection handler with JSON errors and a deadline for the first request head."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._head_deadline, transport)

    def connection_lost(self, exc) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    def _head_deadline(self, transport) -> None:
        if getattr(self, "_request_count", 1) == 0 and not transport.is_closing():
            transport.close()        # no whole request head in time

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if status == 500:
            log.error("HTTP: error handling a request from %s", request.remote, exc_info=exc)
            error = "internal error"
        elif isinstance(exc, LineTooLong) or "too long" in str(message or exc).lower():
            status, error = 413, "request header too large"
        elif "content-length" in str(message or exc).lower():
            error = "bad Content-Length"
        else:
            error = f"malformed request: {message or exc}"
        resp = web.Response(status=status, body=error_body(error), content_type="application/json")
        resp.force_close()
        return resp


class _Refuse(asyncio.Protocol):
    """A connection over the cap: answered 503 and closed."""

    def connection_made(self, transport) -> None:
        body = error_body("too many connections; retry")
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.close()


class Listener:
    def __init__(self, name: str, host: str, port: int, app: web.Application, *,
                 max_connections: int = MAX_CONNECTIONS, ssl=None):
        self.name, self.host, self.port, self.app = name, host, port, app
        self.ssl = ssl                        # an ssl.SSLContext: serve HTTPS
        self.max_connections = max_connections
        self.refused = 0                      # connections answered 503 (over the cap)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None
        self._open: set = set()

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._server = await asyncio.get_running_loop().create_server(
            self._protocol, self.host, self.port, reuse_address=True, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("%s listening on %s://%s:%d", self.name, "https" if self.ssl else "http", _fmt(self.host),
                 self.port)

    def _protocol(self) -> asyncio.Protocol:
        self._open = {h for h in self._open if h.transport is not None}
        if len(self._open) >= self.max_connections:
            self.refused += 1
            return _Refuse()
        h = _Handler(self._runner.server, loop=asyncio.get_running_loop(), keepalive_timeout=KEEPALIVE,
                     max_line_size=MAX_LINE, max_field_size=MAX_LINE, max_headers=MAX_HEADERS,
                     lingering_time=LINGER, access_log=None)
        self._open.add(h)
        return h

    @property
    def connections(self) -> int:
        return sum(1 for h in self._open if h.transport is not None)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()      # closes the open connections
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host
