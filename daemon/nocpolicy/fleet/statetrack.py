"""Convergence of fleet state as the controller sees it (pure: times passed in).

Per node and kind, the controller wants the versions of two streams held: the fleet-wide one
and the node's own. A node is *behind* from the first publish it has not acknowledged until an
acknowledgement names versions at or above both; that time is its lag, and when it catches up
(a fresh ack, not a retained one replayed at a controller start) it feeds the convergence
histogram of the kind. No customer appears anywhere here (Art. 37).
"""

from __future__ import annotations

from .fleet import Histogram
from .statewire import FLEET, NODE


class StateTracker:
    def __init__(self):
        self.acked: dict[str, dict] = {}            # node -> {kind: {"fleet": v, "node": v}}
        self.acked_at: dict[str, str] = {}
        self.detail: dict[str, dict] = {}           # node -> {kind: last result}
        self.behind_since: dict[tuple[str, str], float] = {}
        self.kinds: set[str] = set()                # every kind published (an ack costs O(kinds), not O(nodes))
        self.converge: dict[str, Histogram] = {}

    def published(self, kind: str, nodes, now: float) -> None:
        """A version of ``kind`` was published that ``nodes`` must now acknowledge."""
        self.kinds.add(kind)
        for n in nodes:
            self.behind_since.setdefault((n, kind), now)

    def on_ack(self, node: str, doc: dict, want, now: float, wall: str, *, fresh: bool) -> None:
        """``want(node, kind) -> (fleet version, node version)`` the controller published."""
        held = doc.get("held")
        if not isinstance(held, dict):
            return
        self.acked[node] = {k: v for k, v in held.items() if isinstance(v, dict)}
        self.acked_at[node] = wall
        last = doc.get("last")
        self.detail[node] = last if isinstance(last, dict) else {}
        for kind in self.kinds:
            since = self.behind_since.get((node, kind))
            if since is not None and self.caught_up(node, kind, want(node, kind)):
                del self.behind_since[(node, kind)]
                if fresh:
                    self.converge.setdefault(kind, Histogram()).observe(max(0.0, now - since))

    def held(self, node: str, kind: str) -> tuple[int, int]:
        h = self.acked.get(node, {}).get(kind, {})
        return _int(h.get(FLEET)), _int(h.get(NODE))

    def caught_up(self, node: str, kind: str, want: tuple[int, int]) -> bool:
        f, n = self.held(node, kind)
        return f >= want[0] and n >= want[1]

    def forget(self, members) -> None:
        members = set(members)
        for key in [k for k in self.behind_since if k[0] not in members]:
            del self.behind_since[key]
        for n in [n for n in self.acked if n not in members]:
            self.acked.pop(n, None)
            self.acked_at.pop(n, None)
            self.detail.pop(n, None)

    def row(self, node: str, kind: str, want: tuple[int, int], online: bool | None, now: float) -> dict:
        f, n = self.held(node, kind)
        behind = not self.caught_up(node, kind, want)
        since = self.behind_since.get((node, kind))
        state = "offline" if not online else ("pending" if behind else "converged")
        last = self.detail.get(node, {}).get(kind) or {}
        return {"node": node, "kind": kind, "state": state, "want": list(want), "held": [f, n],
                "lag_seconds": round(now - since, 3) if behind and since is not None else None,
                "result": last.get("result"), "detail": str(last.get("detail") or "")[:300],
                "acked_at": self.acked_at.get(node)}


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0
