"""Detection summaries flow upward: agents -> controller (Art. 45(5) analysis, Art. 37 privacy).

Agent: every ``dns.detections_interval`` it publishes, retained, to
``nodes/<node>/up/detections`` the counts of its detection log over the last 24 hours per
list, class and customer -- counts only: no client address, no pseudonym (those stay on
the node), no name. Retained and replaced each time, so delivery is at least once and
idempotent by construction: the controller keeps the latest document of each node.

Controller: keeps the latest document of each fleet node (bounded) and answers
``fleet.detections`` (``nocpolicyctl detections --fleet``) with the sums per list, class and
customer and the count per node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

from .wire import ROOT, dumps

log = logging.getLogger(__name__)

WINDOW = dt.timedelta(hours=24)
MAX_ROWS = 5000              # rows per node document (the largest counts)
MAX_BYTES = 4 << 20
UP_FILTER = f"{ROOT}/nodes/+/up/detections"


def up_topic(node: str) -> str:
    return f"{ROOT}/nodes/{node}/up/detections"


def summary_document(node: str, rows: list[dict], now: dt.datetime) -> dict:
    """Counts per list, class and customer (pure): nothing that identifies a client or a name."""
    acc: dict[tuple, int] = {}
    for r in rows:
        key = (str(r.get("list")), str(r.get("class")), r.get("customer"))
        acc[key] = acc.get(key, 0) + int(r.get("count") or 0)
    top = sorted(acc.items(), key=lambda kv: -kv[1])[:MAX_ROWS]
    return {"node": node, "at": now.isoformat(), "window_hours": WINDOW.total_seconds() / 3600,
            "truncated": len(acc) > MAX_ROWS,
            "counts": [{"list": k[0], "class": k[1], "customer": k[2], "count": n} for k, n in top]}


async def publish_loop(node: str, *, source, clock, interval, publish) -> None:
    """Agent: publish the summary every ``interval()`` seconds (``source.detection_summary(since)``)."""
    while True:
        await clock.sleep(interval())
        now = clock.now()
        rows = await asyncio.to_thread(source.detection_summary, now - WINDOW)
        await publish(up_topic(node), dumps(summary_document(node, rows, now)), retain=True)


def node_document(topic: str, payload: bytes, field: str, max_bytes: int) -> tuple[str, dict]:
    """(node, document) of an upward message on ``nocpolicy/v1/nodes/<node>/up/...``: at most
    ``max_bytes``, a JSON object naming the topic's node, with a list under ``field``; else
    ValueError naming what is wrong."""
    parts = topic.split("/")
    node = parts[3] if len(parts) == 6 else ""
    if len(payload) > max_bytes:
        raise ValueError(f"{topic}: {len(payload)} bytes exceeds {max_bytes}")
    doc = json.loads(payload)
    if not isinstance(doc, dict) or doc.get("node") != node or not isinstance(doc.get(field), list):
        raise ValueError(f"{topic}: expected {{node: {node!r}, {field}: [...]}}")
    return node, doc


def parse_summary(topic: str, payload: bytes) -> tuple[str, dict]:
    """(node, document) of a node's summary, or ValueError naming what is wrong."""
    node, doc = node_document(topic, payload, "counts", MAX_BYTES)
    counts = []
    for c in doc["counts"][:MAX_ROWS]:
        if not (isinstance(c, dict) and isinstance(c.get("count"), int) and isinstance(c.get("list"), str)
                and isinstance(c.get("class"), str) and (c.get("customer") is None
                                                        or isinstance(c.get("customer"), str))):
            raise ValueError(f"{topic}: counts: each is {{list, class, customer, count}}")
        counts.append({k: c[k] for k in ("list", "class", "customer", "count")})
    return node, {"at": str(doc.get("at", ""))[:40], "counts": counts}


class FleetDetections:
    """Controller: the latest summary of each fleet node."""

    def __init__(self, members):
        self._members = members
        self.latest: dict[str, dict] = {}
        self.refused = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            node, doc = parse_summary(topic, payload)
        except (ValueError, UnicodeDecodeError) as exc:
            self.refused += 1
            log.warning("fleet detections refused: %s", str(exc)[:300])
            return
        if node in set(self._members()):
            self.latest[node] = doc

    def answer(self, customer: str | None = None, node: str | None = None) -> dict:
        members = set(self._members())
        sums: dict[tuple, dict] = {}
        for n, doc in sorted(self.latest.items()):
            if n not in members or (node and n != node):
                continue
            for c in doc["counts"]:
                if customer and c["customer"] != customer:
                    continue
                row = sums.setdefault((c["list"], c["class"], c["customer"]),
                                      {"list": c["list"], "class": c["class"], "customer": c["customer"],
                                       "count": 0, "nodes": {}})
                row["count"] += c["count"]
                row["nodes"][n] = row["nodes"].get(n, 0) + c["count"]
        return {"nodes": {n: d["at"] for n, d in sorted(self.latest.items()) if n in members},
                "window_hours": WINDOW.total_seconds() / 3600,
                "summary": sorted(sums.values(), key=lambda r: -r["count"])}
