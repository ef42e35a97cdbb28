"""Events out: which bus events leave the node, detection counts per interval, a bounded outbox.

Privacy (Art. 37): single detections never leave the node; they are folded into
counts per list and class for each interval (``dns.detections_interval``, 60 s by
default). Aggregated ``detections`` events (the detect component's) leave as counts
only. Other kinds are forwarded only when listed in FORWARDED.
"""

from __future__ import annotations

from collections import Counter, deque

FORWARDED = ("reload", "emergency", "window", "notice")
SINGLE_DETECTIONS = ("detection", "block")     # one event per blocked query: folded into counts
AGGREGATED = "detections"                      # already counts per interval: forwarded, counts only


def counts_only(payload: dict) -> dict:
    """An aggregated detections event reduced to counts per list, class (and input source)."""
    rows = []
    for c in payload.get("counts") or ():
        if isinstance(c, dict) and isinstance(c.get("list"), str) and isinstance(c.get("class"), str):
            row = {"list": c["list"], "class": c["class"], "count": c.get("count", 0)}
            if isinstance(c.get("source"), str):
                row["source"] = c["source"]
            rows.append(row)
    out = {"counts": rows, "total": sum(r["count"] for r in rows if isinstance(r["count"], int))}
    for k in ("interval_s", "interval_seconds", "from", "to"):
        if k in payload:
            out[k] = payload[k]
    return out


class DetectionCounts:
    """Counts per (list, class) since the last flush."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.since: str | None = None

    def add(self, payload: dict, ts: str) -> None:
        lst, cls = payload.get("list"), payload.get("class")
        if not isinstance(lst, str) or not isinstance(cls, str):
            return
        n = payload.get("count", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            n = 1
        if self.since is None:
            self.since = ts
        self.counts[(lst, cls)] += n

    def flush(self, now: str, interval: float) -> dict | None:
        """The aggregate document, or None when nothing was detected."""
        if not self.counts:
            return None
        doc = {"from": self.since, "to": now, "interval_seconds": interval,
               "counts": [{"list": lst, "class": cls, "count": n}
                          for (lst, cls), n in sorted(self.counts.items())],
               "total": sum(self.counts.values())}
        self.counts.clear()
        self.since = None
        return doc


class Outbox:
    """Bounded FIFO of (topic, payload); when full the oldest is dropped and counted."""

    def __init__(self, maxlen: int = 1000):
        self._q: deque = deque()
        self.maxlen = maxlen
        self.dropped = 0
        self.published = 0

    def put(self, topic: str, payload: bytes) -> None:
        if len(self._q) >= self.maxlen:
            self._q.popleft()
            self.dropped += 1
        self._q.append((topic, payload))

    def peek(self):
        return self._q[0] if self._q else None

    def pop(self) -> None:
        self._q.popleft()
        self.published += 1

    def __len__(self) -> int:
        return len(self._q)
