"""The fleet's enforcement plan as a versioned JSON document (pure: build, digest, parse).

The controller publishes one retained document per node at
``nocpolicy/v1/nodes/<node>/plan``::

    {"version": 7, "node": "edge-tokyo-1", "issued_at": "...", "controller": "noc-central",
     "policy": "<controller's policy hash>", "emergency": {...} | null, "enforcement": {...} | null}

``version`` is a fleet-wide counter that rises whenever the content changes;
``emergency`` is the controller's emergency state and ``enforcement`` the qos
plan serialised by ``qos.plan_to_json`` (opaque here), or null when none.
"""

from __future__ import annotations

import hashlib
import json

from .wire import MAX_PAYLOAD


class PlanInvalid(Exception):
    def __init__(self, message: str, version: int | None = None):
        self.version = version
        super().__init__(message)


def content_digest(contents: dict[str, dict]) -> str:
    """A stable hash of every node's plan content (what decides a new version)."""
    text = json.dumps(contents, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_document(version: int, node: str, content: dict, *, controller: str, issued_at: str) -> dict:
    return {"version": version, "node": node, "issued_at": issued_at, "controller": controller, **content}


def parse_plan(payload: bytes, node: str) -> dict:
    """Validate a received plan for ``node``; PlanInvalid says what is wrong."""
    if len(payload) > MAX_PAYLOAD:
        raise PlanInvalid(f"plan of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanInvalid(f"plan is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanInvalid("plan must be a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PlanInvalid(f"version: expected an integer >= 1, got {version!r}")
    if doc.get("node") != node:
        raise PlanInvalid(f"node: plan is for {doc.get('node')!r}, this node is {node!r}", version)
    for key in ("emergency", "enforcement"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise PlanInvalid(f"{key}: expected an object or null", version)
    return doc


def ack_document(node: str, version: int | None, result: str, detail: str, *, at: str,
                 daemon: str) -> dict:
    """``result``: applied (enforced), recorded (accepted, no enforcement backend here), failed."""
    return {"node": node, "version": version, "result": result, "detail": detail[:500], "at": at,
            "daemon": daemon}
