"""Admin API: HTTP + JSON on loopback, bearer token required on every route.

Routes:
  GET  /v1/status          daemon, policy and component status
  GET  /v1/commands        the commands this daemon knows
  POST /v1/cmd/<name>      run a command; JSON body are its arguments
"""

from __future__ import annotations

import logging

from ..errors import CommandError
from ..web.plain import Request, Response
from .commands import CommandRegistry
from .token import token_matches

log = logging.getLogger(__name__)


class AdminApi:
    def __init__(self, registry: CommandRegistry, token: str):
        self.registry = registry
        self.token = token

    def authorize(self, req: Request) -> Response | None:
        """401 unless the bearer token matches; checked on the request head, before any body is read."""
        if token_matches(self.token, req.headers.get("authorization")):
            return None
        resp = Response.of_json({"error": "missing or wrong bearer token (see <state-dir>/admin.token)"}, 401)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="nocpolicy"'
        return resp

    async def handle(self, req: Request) -> Response:
        denied = self.authorize(req)
        if denied is not None:
            return denied
        if req.path == "/v1/status" and req.method == "GET":
            return await self._run("status", {})
        if req.path == "/v1/commands" and req.method == "GET":
            return Response.of_json({"commands": self.registry.describe()})
        if req.path.startswith("/v1/cmd/"):
            if req.method != "POST":
                return Response.of_json({"error": "use POST"}, 405)
            try:
                payload = req.json()
            except (ValueError, UnicodeDecodeError) as exc:
                return Response.of_json({"error": f"body is not JSON: {exc}"}, 400)
            return await self._run(req.path[len("/v1/cmd/"):], payload,
                                   request_id=req.headers.get("x-request-id"))
        return Response.of_json({"error": f"no route {req.method} {req.path}"}, 404)

    async def _run(self, name: str, payload, request_id: str | None = None) -> Response:
        try:
            result = await self.registry.dispatch(name, payload, actor="admin", source="admin-api",
                                                  request_id=request_id)
        except CommandError as exc:
            body = {"error": str(exc)}
            if exc.field:
                body["field"] = exc.field
            return Response.of_json(body, exc.status)
        return Response.of_json(result)
