"""From observations to detections: the guard's verdict, one detection per lookup.

A passive observer often sees a lookup twice (the query and its response, as
dnstap and capture do). Lookups are paired by (client, port, id, name): the
query is judged and recorded; its response reuses that verdict (no second
detection) and only contributes the answer addresses. A response whose query
was not seen (a resolver logging responses only) is judged on its own.

Like the inline guard, a response whose CNAME chain reaches a listed name is a
detection of that name (``via_cname``) even when the query name is not listed.

Captured responses can be forged by anyone on the path, so for those sources
(``FORGEABLE``) a response counts only when it pairs with a query seen earlier:
same client address and port, ID and question (name and type), answered by the
server the query went to; each query is paired once. Anything else is dropped and
counted (``unpaired``): it neither detects nor blocks anything.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from .message import cname_targets
from .observation import FORGEABLE, SOURCES, Observation

REMEMBER = 16384         # lookups kept for pairing a response with its query


class Pipeline:
    def __init__(self, guard, on_block: Callable[[object, Observation], None]):
        self.guard = guard
        self.on_block = on_block
        self.recent: OrderedDict[tuple, object] = OrderedDict()
        self.observed = dict.fromkeys(SOURCES, 0)
        self.detected: dict[tuple[str, str, str], int] = {}     # (source, list, class) -> count
        self.errors = 0
        self.unpaired = 0
        self.queries: OrderedDict[tuple, tuple] = OrderedDict()  # key -> (hit, server, qtype, answered)

    def observe_many(self, batch: list[Observation]) -> None:
        for obs in batch:
            self.observe(obs)

    def observe(self, obs: Observation) -> None:
        self.observed[obs.source] = self.observed.get(obs.source, 0) + 1
        key = obs.key
        if obs.source in FORGEABLE:
            self._forgeable(obs, key)
            return
        if key is not None:
            seen = self.recent.get(key, _MISS)
            if seen is not _MISS:
                self.recent.move_to_end(key)
                if seen is not None and obs.response:
                    self.on_block(seen, obs)
                elif seen is None and obs.response and obs.wire is not None:
                    self._cnames(obs, key)
                return
        if not obs.name:
            return
        v = self.guard.judge(obs.client, obs.name)
        hit = v if (v.blocked and v.list is not None) else None
        if key is not None:
            self.recent[key] = hit
            if len(self.recent) > REMEMBER:
                self.recent.popitem(last=False)
        if hit is None:
            if obs.response and obs.wire is not None:
                self._cnames(obs, key)
            return
        self._detected(hit, obs, obs.name)

    def _forgeable(self, obs: Observation, key) -> None:
        if obs.response:
            q = self.queries.get(key) if key is not None else None
            if q is None or q[1:] != (obs.server, obs.qtype, False):
                self.unpaired += 1
                return
            self.queries[key] = (*q[:3], True)          # paired once: a second response is not
            if q[0] is not None:
                self.on_block(q[0], obs)
            elif obs.wire is not None:
                self._cnames(obs, None)
            return
        if key is None or not obs.name:
            return
        if key in self.queries:            # a retransmission: one lookup
            self.queries.move_to_end(key)
            return
        v = self.guard.judge(obs.client, obs.name)
        hit = v if (v.blocked and v.list is not None) else None
        self.queries[key] = (hit, obs.server, obs.qtype, False)
        if len(self.queries) > REMEMBER:
            self.queries.popitem(last=False)
        if hit is not None:
            self._detected(hit, obs, obs.name)

    def _detected(self, hit, obs: Observation, name: str) -> None:
        self.guard.record(hit, obs.client, name, obs.source)
        k = (obs.source, hit.list, hit.cls)
        self.detected[k] = self.detected.get(k, 0) + 1
        self.on_block(hit, obs)

    def _cnames(self, obs: Observation, key) -> None:
        for target in cname_targets(obs.wire):
            v = self.guard.judge(obs.client, target)
            if v.blocked and v.list is not None:
                hit = replace(v, via_cname=True)
                if key is not None:
                    self.recent[key] = hit
                self._detected(hit, obs, target)
                return


_MISS = object()
