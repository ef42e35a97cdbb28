"""Fleet state on the wire: topics and documents of the runtime decisions the controller owns (pure).

Every kind of state (``optout``, ``lists``, later ``consent`` and ``suspension``) travels in
*streams*. A stream is one kind for one scope: ``fleet`` (what every node applies: list
entries, and the decisions of customers whose ``nodes`` is empty) or one node (decisions of
customers pinned to that node). Each stream is a retained snapshot plus a ring of retained
increments::

    nocpolicy/v1/fleet/<kind>/snap                 snapshot of the fleet-wide stream
    nocpolicy/v1/fleet/<kind>/delta/<slot>         increments (slot = sequence mod RING)
    nocpolicy/v1/nodes/<node>/state/<kind>/snap    snapshot of <node>'s own stream
    nocpolicy/v1/nodes/<node>/state/<kind>/delta/<slot>
    nocpolicy/v1/nodes/<node>/state/ack            retained: the versions <node> holds, per kind and scope
    nocpolicy/v1/fleet/<kind>/part/<i>             a snapshot larger than the part size, in parts
    nocpolicy/v1/nodes/<node>/state/<kind>/part/<i>

Snapshot: ``{"kind", "scope", "node", "version", "controller", "issued_at", "entries": {key: value}}``.
Increment: the same head plus ``"base"`` (the stream's previous version), ``"set": {key: value}``
and ``"del": [key, ...]``. A snapshot larger than the part size (``control.state_part_size``)
is published in parts: ``.../snap`` then holds the head plus ``"parts": N`` and ``"count"`` (the
entries of the whole) and no entries, and ``.../part/<i>`` (i < N) the head plus ``"part": i``,
``"parts"``, ``"count"`` and its share of the entries. Versions come from one counter per kind at the controller, kept in
its store, so they rise across restarts; within a stream they rise with gaps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .wire import ROOT

FLEET = "fleet"
NODE = "node"
RING = 1024                   # retained increment slots per stream
COMPACT_EVERY = 512           # a new snapshot after this many increments (< RING: the ring always
                              # holds every increment after the retained snapshot)
MAX_STATE_BYTES = 32 << 20    # a state message larger than this is refused unread
MAX_PARTS = 1024              # parts of one split snapshot
MAX_KEY = 300                 # a key (customer id, list:name) longer than this is refused


def fleet_snap_topic(kind: str) -> str:
    return f"{ROOT}/fleet/{kind}/snap"


def fleet_delta_topic(kind: str, slot: int) -> str:
    return f"{ROOT}/fleet/{kind}/delta/{slot}"


def node_snap_topic(node: str, kind: str) -> str:
    return f"{ROOT}/nodes/{node}/state/{kind}/snap"


def node_delta_topic(node: str, kind: str, slot: int) -> str:
    return f"{ROOT}/nodes/{node}/state/{kind}/delta/{slot}"


def fleet_part_topic(kind: str, part: int) -> str:
    return f"{ROOT}/fleet/{kind}/part/{part}"


def node_part_topic(node: str, kind: str, part: int) -> str:
    return f"{ROOT}/nodes/{node}/state/{kind}/part/{part}"


def state_ack_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/state/ack"


STATE_ACK_FILTER = f"{ROOT}/nodes/+/state/ack"


def agent_filters(node: str) -> list[str]:
    """What an agent subscribes to: the fleet-wide streams and its own."""
    return [f"{ROOT}/fleet/+/snap", f"{ROOT}/fleet/+/delta/+", f"{ROOT}/fleet/+/part/+",
            f"{ROOT}/nodes/{node}/state/+/snap", f"{ROOT}/nodes/{node}/state/+/delta/+",
            f"{ROOT}/nodes/{node}/state/+/part/+"]


def stream_topics(kind: str, scope: str, slot: int | None, part: int | None = None) -> str:
    """Topic of a stream's snapshot (slot None), one increment slot or one part of a split snapshot
    (``part``); ``scope`` is FLEET or a node."""
    if part is not None:
        return fleet_part_topic(kind, part) if scope == FLEET else node_part_topic(scope, kind, part)
    if scope == FLEET:
        return fleet_snap_topic(kind) if slot is None else fleet_delta_topic(kind, slot)
    return node_snap_topic(scope, kind) if slot is None else node_delta_topic(scope, kind, slot)


def is_state_topic(topic: str) -> bool:
    p = topic.split("/")
    return ((len(p) in (5, 6) and p[:3] == ["nocpolicy", "v1", "fleet"])
            or (len(p) in (7, 8) and p[:3] == ["nocpolicy", "v1", "nodes"] and p[4] == "state"))


@dataclass(frozen=True)
class StateMsg:
    kind: str
    scope: str                  # FLEET or NODE
    version: int
    controller: str
    snapshot: bool
    entries: dict = field(default_factory=dict)   # snapshot: everything; increment: the keys set
    deleted: tuple = ()                            # increment: keys removed
    base: int = 0                                  # increment: the version it applies on
    parts: int = 0                                 # a split snapshot: its number of parts (0: whole)
    part: int | None = None                        # one part (None: the head at .../snap)
    count: int = 0                                 # a split snapshot: the entries of the whole

    @property
    def stream(self) -> tuple[str, str]:
        return (self.kind, self.scope)


class StateRefused(Exception):
    """A state message the agent does not apply; ``reason`` is the metric label."""

    def __init__(self, reason: str, message: str, kind: str = "", version: int | None = None):
        self.reason, self.kind, self.version = reason, kind, version
        super().__init__(message)


REASONS = ("too_large", "malformed", "other_node", "invalid", "old", "unknown_kind", "incomplete")


def _topic_parts(topic: str, node: str) -> tuple[str, str, str, str]:
    """(kind, scope, "snap"/"delta"/"part", slot or part number) of a state topic this agent subscribed to."""
    p = topic.split("/")
    if p[2] == "fleet":
        return p[3], FLEET, p[4], (p[5] if len(p) > 5 else "")
    if p[3] != node:
        raise StateRefused("other_node", f"{topic}: a topic of node {p[3]!r}, this node is {node!r}")
    return p[5], NODE, p[6], (p[7] if len(p) > 7 else "")


def parse_state(topic: str, payload: bytes, node: str, kinds) -> StateMsg:
    """A received state message -> StateMsg, or StateRefused naming what is wrong (pure).

    ``kinds`` are the kind names this agent knows. Entry values are checked by the kind
    (``fleet.kinds``), not here.
    """
    kind, scope, what, level = _topic_parts(topic, node)
    if kind not in kinds:
        raise StateRefused("unknown_kind", f"{topic}: unknown kind {kind!r} (known: {', '.join(kinds)})")
    if len(payload) > MAX_STATE_BYTES:
        raise StateRefused("too_large", f"{topic}: {len(payload)} bytes exceeds {MAX_STATE_BYTES}", kind)
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateRefused("malformed", f"{topic}: not valid JSON: {exc}", kind) from None
    if not isinstance(doc, dict):
        raise StateRefused("malformed", f"{topic}: expected a JSON object", kind)
    version = doc.get("version")
    if not _posint(version):
        raise StateRefused("malformed", f"{topic}: version: expected an integer >= 1, got {version!r}", kind)
    if doc.get("kind") != kind or doc.get("scope") != scope:
        raise StateRefused("invalid", f"{topic}: kind/scope {doc.get('kind')!r}/{doc.get('scope')!r} "
                           f"do not match the topic ({kind}/{scope})", kind, version)
    if scope == NODE and doc.get("node") != node:
        raise StateRefused("other_node", f"{topic}: state is for {doc.get('node')!r}, this node is {node!r}",
                           kind, version)
    controller = doc.get("controller") if isinstance(doc.get("controller"), str) else ""
    if what == "part" or (what == "snap" and "parts" in doc):
        return _split(doc, topic, level if what == "part" else None, (kind, scope, version, controller[:64]))
    if what == "snap":
        entries = _entries(doc.get("entries"), topic, "entries", kind, version)
        return StateMsg(kind, scope, version, controller[:64], True, entries)
    base = doc.get("base")
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base < version:
        raise StateRefused("malformed", f"{topic}: base: expected an integer below version {version}, "
                           f"got {base!r}", kind, version)
    dels = doc.get("del", [])
    if not isinstance(dels, list) or not all(isinstance(k, str) and 0 < len(k) <= MAX_KEY for k in dels):
        raise StateRefused("malformed", f"{topic}: del: expected a list of keys", kind, version)
    entries = _entries(doc.get("set", {}), topic, "set", kind, version)
    return StateMsg(kind, scope, version, controller[:64], False, entries, tuple(dels), base)


def _split(doc: dict, topic: str, level: str | None, head4: tuple) -> StateMsg:
    """The head (``level`` None) or one part of a split snapshot."""
    kind, scope, version, controller = head4
    parts, count = doc.get("parts"), doc.get("count")
    if not (_posint(parts) and 2 <= parts <= MAX_PARTS):
        raise StateRefused("malformed", f"{topic}: parts: expected an integer 2..{MAX_PARTS}, got {parts!r}",
                           kind, version)
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
        raise StateRefused("malformed", f"{topic}: count: expected an integer >= 0, got {count!r}", kind, version)
    if level is None:
        return StateMsg(kind, scope, version, controller, True, parts=parts, count=count)
    part = doc.get("part")
    if not level.isdigit() or part != int(level) or not 0 <= part < parts:
        raise StateRefused("malformed", f"{topic}: part: expected {level} (the topic's), below parts {parts}, "
                           f"got {part!r}", kind, version)
    entries = _entries(doc.get("entries"), topic, "entries", kind, version)
    return StateMsg(kind, scope, version, controller, True, entries, parts=parts, part=part, count=count)


def _entries(obj: Any, topic: str, what: str, kind: str, version: int) -> dict:
    if not isinstance(obj, dict):
        raise StateRefused("malformed", f"{topic}: {what}: expected a JSON object", kind, version)
    bad = next((k for k in obj if not 0 < len(k) <= MAX_KEY), None)
    if bad is not None:
        raise StateRefused("invalid", f"{topic}: {what}: key {bad[:40]!r}: 1-{MAX_KEY} characters", kind, version)
    return obj


def _posint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def head(kind: str, scope: str, version: int, controller: str, issued_at: str) -> dict:
    node = None if scope == FLEET else scope
    return {"kind": kind, "scope": FLEET if scope == FLEET else NODE, "node": node, "version": version,
            "controller": controller, "issued_at": issued_at}
