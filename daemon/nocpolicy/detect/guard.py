"""The DNS guard as passive detection uses it (a thin adapter over ``ctx.components["dns"]``).

Detection shares the guard's verdict (lists, classes, opt-out, allowlist) and
its detection log; this adapter is the only place that knows the guard's API::

    guard.judge(client, name) -> Verdict
    guard.record_detection(verdict, client, name, source=...)
    guard.optout_state        {customer: (opted_out, "policy" | "runtime")}
    guard.all_stats()         per-process counters, ``.blocked[(list, class, action)]``
"""

from __future__ import annotations

from ..errors import NocpolicyError


class GuardAdapter:
    def __init__(self, components: dict):
        self._components = components

    @property
    def guard(self):
        g = self._components.get("dns")
        if g is None or not hasattr(g, "judge") or not hasattr(g, "record_detection"):
            raise NocpolicyError("passive detection needs the DNS guard component (its lists, opt-outs "
                                 "and detection log), and it is not available")
        return g

    def available(self) -> bool:
        g = self._components.get("dns")
        return g is not None and hasattr(g, "judge") and hasattr(g, "record_detection")

    def judge(self, client: str, name: str):
        return self.guard.judge(client, name)

    def record(self, verdict, client: str, name: str, source: str) -> None:
        self.guard.record_detection(verdict, client, name, source=source)

    def optouts(self) -> frozenset[str]:
        state = getattr(self._components.get("dns"), "optout_state", None) or {}
        return frozenset(cid for cid, (on, _src) in state.items() if on)

    def guard_blocked(self) -> dict[tuple[str, str], int]:
        """Blocks the guard answered itself, per (list, class): the ``source="guard"`` detections."""
        g = self._components.get("dns")
        out: dict[tuple[str, str], int] = {}
        if g is None or not hasattr(g, "all_stats"):
            return out
        for s in g.all_stats():
            for key, n in getattr(s, "blocked", {}).items():
                lst, cls = key[0], key[1]
                out[(lst, cls)] = out.get((lst, cls), 0) + n
        return out
