"""Events out: which bus events leave the node, detection counts per interval, a bounded outbox.

Privacy (Art. 37): single detections never leave the node; they are folded into
counts per list and class for each interval. Other kinds are forwarded only
when listed in FORWARDED (their payloads carry no client addresses).
"""

from __future__ import annotations

from collections import Counter, deque

FORWARDED = ("reload", "emergency", "window", "notice", "maintenance", "lists")
DETECTION_KINDS = ("detection", "detections", "block")


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
