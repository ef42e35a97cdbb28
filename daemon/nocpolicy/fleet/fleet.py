"""Fleet convergence as seen by the controller (pure: no I/O, times passed in).

A node is *offline* unless its retained status says online; an online node is
*converged* when its acknowledgement names the plan version last published for
it with a good result, *failed* when it names that version with result
``failed``, and *pending* otherwise (no ack yet, or an older version).
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("converged", "pending", "failed", "offline")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
GOOD_RESULTS = ("applied", "recorded")


@dataclass
class NodeView:
    node: str
    desired: int | None = None          # plan version published for this node
    published_at: float | None = None   # monotonic time of that publish
    acked: int | None = None
    result: str | None = None           # applied | recorded | failed
    detail: str = ""
    acked_wall: str | None = None
    online: bool | None = None          # None: never seen
    daemon: str | None = None           # nocpolicyd version it reports
    policy: str | None = None           # policy hash it reports
    status_wall: str | None = None
    observed: bool = False              # converge time of `desired` already counted

    @property
    def state(self) -> str:
        if not self.online:
            return "offline"
        if self.desired is None or self.acked != self.desired:
            return "pending"
        return "failed" if self.result not in GOOD_RESULTS else "converged"


class Histogram:
    """Cumulative-bucket histogram kept in plain numbers (exported by a collector)."""

    def __init__(self, buckets=BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def samples(self) -> list[tuple[str, float]]:
        return [(_fmt(b), c) for b, c in zip(self.buckets, self.counts, strict=True)] + [("+Inf", self.count)]


def _fmt(b: float) -> str:
    return repr(float(b))


class FleetTracker:
    def __init__(self):
        self.nodes: dict[str, NodeView] = {}
        self.converge = Histogram()

    def set_members(self, names) -> None:
        """The fleet named by the policy; views of nodes that left are dropped."""
        names = set(names)
        for n in list(self.nodes):
            if n not in names:
                del self.nodes[n]
        for n in names:
            self.nodes.setdefault(n, NodeView(n))

    def planned(self, node: str, version: int, now: float) -> None:
        v = self.nodes.get(node)
        if v is None:
            return
        if v.desired != version:
            v.desired, v.published_at, v.observed = version, now, False
        elif v.published_at is None:
            v.published_at = now

    def on_status(self, node: str, doc: dict, wall: str) -> None:
        v = self.nodes.get(node)
        if v is None:
            return
        v.online = doc.get("state") == "online"
        v.daemon = doc.get("version") if isinstance(doc.get("version"), str) else v.daemon
        v.policy = doc.get("policy") if isinstance(doc.get("policy"), str) else v.policy
        v.status_wall = wall

    def on_ack(self, node: str, doc: dict, now: float, wall: str, *, fresh: bool) -> float | None:
        """Record an ack; returns the convergence time observed (fresh acks of the desired version)."""
        v = self.nodes.get(node)
        version = doc.get("version")
        if v is None or not isinstance(version, int) or isinstance(version, bool):
            return None
        v.acked, v.acked_wall = version, wall
        v.result = doc.get("result") if isinstance(doc.get("result"), str) else "failed"
        v.detail = str(doc.get("detail") or "")[:500]
        if (fresh and version == v.desired and not v.observed and v.published_at is not None
                and v.result in GOOD_RESULTS):
            v.observed = True
            took = max(0.0, now - v.published_at)
            self.converge.observe(took)
            return took
        return None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for v in self.nodes.values():
            out[v.state] += 1
        return out

    def snapshot(self, now: float) -> list[dict]:
        rows = []
        for v in sorted(self.nodes.values(), key=lambda v: v.node):
            lag = (round(now - v.published_at, 3)
                   if v.published_at is not None and v.state != "converged" else None)
            rows.append({"node": v.node, "state": v.state, "online": v.online, "desired": v.desired,
                         "acked": v.acked, "result": v.result, "detail": v.detail,
                         "acked_at": v.acked_wall, "status_at": v.status_wall, "daemon": v.daemon,
                         "policy": v.policy, "lag_seconds": lag})
        return rows
