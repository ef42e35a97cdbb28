"""Topics and payloads of the MQTT control plane (pure: no I/O).

Topic tree (root ``nocpolicy/v1/``)::

    cmd/<identity>/<verb>          command in; <identity> is the publisher's MQTT user name,
                                   enforced by the broker ACL ``pattern write nocpolicy/v1/cmd/%u/#``
    reply/<identity>/<request_id>  the answer; readable only by <identity> (``pattern read ...reply/%u/#``)
    events/<kind>                  events out (reload, emergency, window, notice, detections)
    nodes/<node>/status            retained: online (version, policy hash) / offline (last will)
    nodes/<node>/plan              retained: the versioned enforcement plan for <node> (controller)
    nodes/<node>/ack               retained: what <node> did with which plan version (agent)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

ROOT = "nocpolicy/v1"
CMD_FILTER = f"{ROOT}/cmd/+/+"
STATUS_FILTER = f"{ROOT}/nodes/+/status"
ACK_FILTER = f"{ROOT}/nodes/+/ack"

MAX_PAYLOAD = 1 << 20          # a command larger than 1 MiB is refused unread
NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")    # one topic level, like a policy id
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Where the answer goes when the request id cannot be read (bad JSON, missing id).
NO_ID = "-"


def status_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/status"


def plan_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/plan"


def ack_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/ack"


def reply_topic(identity: str, request_id: str) -> str:
    return f"{ROOT}/reply/{identity}/{request_id}"


def event_topic(kind: str) -> str:
    return f"{ROOT}/events/{kind}"


def node_of(topic: str, leaf: str) -> str | None:
    """``nocpolicy/v1/nodes/<node>/<leaf>`` -> node, else None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:3] == ["nocpolicy", "v1", "nodes"] and parts[4] == leaf and parts[3]:
        return parts[3]
    return None


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str).encode()


@dataclass(frozen=True)
class Request:
    identity: str
    verb: str
    request_id: str
    args: dict


class BadRequest(Exception):
    """A command message that cannot be run; ``request_id`` is where to answer (may be NO_ID)."""

    def __init__(self, identity: str, request_id: str, message: str, status: int = 400):
        self.identity, self.request_id, self.status = identity, request_id, status
        super().__init__(message)


def parse_command(topic: str, payload: bytes) -> Request:
    """A ``cmd/<identity>/<verb>`` message -> Request, or BadRequest naming what is wrong.

    Payload: ``{"request_id": "abc-1", "args": {...}}``; ``args`` may be omitted ({}).
    Returns None-free results only; the topic must already match CMD_FILTER.
    """
    parts = topic.split("/")
    if len(parts) != 5 or parts[:3] != ["nocpolicy", "v1", "cmd"]:
        raise ValueError(f"not a command topic: {topic}")
    identity, verb = parts[3], parts[4]
    if len(payload) > MAX_PAYLOAD:
        raise BadRequest(identity, NO_ID, f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}", 413)
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(identity, NO_ID, f"payload is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(identity, NO_ID, "payload must be a JSON object "
                         '{"request_id": "...", "args": {...}}')
    rid = body.get("request_id")
    if not isinstance(rid, str) or not _REQUEST_ID.match(rid):
        raise BadRequest(identity, NO_ID, "request_id: required, 1-64 characters from "
                         "letters, digits, '.', '_', ':', '-'"
                         + (f" (got {rid!r})" if rid is not None else ""))
    unknown = sorted(set(body) - {"request_id", "args"})
    if unknown:
        raise BadRequest(identity, rid, f"unknown key(s) {', '.join(unknown)}: "
                         'expected {"request_id": "...", "args": {...}}')
    args = body.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest(identity, rid, f"args: expected a JSON object, got {type(args).__name__}")
    return Request(identity, verb, rid, args)


def reply(request_id: str, verb: str, *, result: dict | None = None, error: str | None = None,
          status: int = 200, field: str | None = None) -> dict:
    """The reply document: ``ok`` with ``result``, or ``error`` with an HTTP-like ``status``."""
    if error is None:
        return {"request_id": request_id, "verb": verb, "ok": True, "status": status, "result": result or {}}
    out = {"request_id": request_id, "verb": verb, "ok": False, "status": status, "error": error}
    if field:
        out["field"] = field
    return out
