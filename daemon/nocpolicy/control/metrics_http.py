"""The /metrics, /healthz, /readyz endpoint, served like the admin API on its own listener."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ..metrics import CONTENT_TYPE
from ..web.plain import Request, Response


def metrics_handler(registry: CollectorRegistry, ready):
    async def handle(req: Request) -> Response:
        if req.method != "GET":
            return Response.of_json({"error": "use GET"}, 405)
        if req.path == "/metrics":
            return Response(200, generate_latest(registry), CONTENT_TYPE)
        if req.path == "/healthz":
            return Response.text("ok\n")
        if req.path == "/readyz":
            ok, why = ready()
            return Response.text(("ready\n" if ok else f"not ready: {why}\n"), 200 if ok else 503)
        return Response.text("see /metrics, /healthz, /readyz\n", 404)
    return handle
