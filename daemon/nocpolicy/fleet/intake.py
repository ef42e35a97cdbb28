"""Limits on MQTT command intake (pure state, no I/O): size per verb, rate per identity,
and refusals aggregated before they reach the audit.

* **Size.** A command payload may be at most ``VERB_MAX_BYTES[verb]`` (default
  ``DEFAULT_MAX_BYTES``); a larger one is refused unread (413).
* **Rate.** Each identity has a token bucket of ``BURST`` commands refilled at
  ``RATE`` per second; a command beyond it is refused (429) without running.
* **Audit.** Refusals (not granted, too large, too fast, retained) are audited per
  (identity, verb, reason) and window of ``AUDIT_WINDOW`` seconds: the first one
  at once, the others counted and written as one ``mqtt.refused.summary`` record
  when the window closes. One identity that keeps sending refused commands adds
  at most two audit rows per verb and reason per window; at most ``AUDIT_KEYS``
  windows are open at once (the oldest is closed first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_BYTES = 64 * 1024
VERB_MAX_BYTES = {"list.update": 1 << 20}     # a threat-intel feed may push 10,000 names at once
PARSE_OFF_LOOP = 16 * 1024                    # payloads above this are parsed in a thread
RATE = 10.0                                   # commands per second per identity, sustained
BURST = 50
IDENTITIES = 4096                             # rate buckets kept (the least recently used go first)
AUDIT_WINDOW = 300.0
AUDIT_KEYS = 1024


def max_bytes(verb: str) -> int:
    return VERB_MAX_BYTES.get(verb, DEFAULT_MAX_BYTES)


class RateLimit:
    """Token buckets per identity (``now`` is a monotonic time in seconds)."""

    def __init__(self, rate: float = RATE, burst: int = BURST, keys: int = IDENTITIES):
        self.rate, self.burst, self.keys = rate, burst, keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # identity -> (tokens, at)

    def allow(self, identity: str, now: float) -> bool:
        tokens, at = self._buckets.pop(identity, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        ok = tokens >= 1.0
        self._buckets[identity] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self.keys:
            self._buckets.popitem(last=False)
        return ok


@dataclass
class _Window:
    start: float
    first: dict
    count: int = 1


class RefusalAudit:
    """Decides which refusals become audit records. ``refused`` returns the records to
    write now as (action, subject, after) tuples; the caller writes them."""

    def __init__(self, window: float = AUDIT_WINDOW, keys: int = AUDIT_KEYS):
        self.window, self.keys = window, keys
        self._open: OrderedDict[tuple[str, str, str], _Window] = OrderedDict()
        self.suppressed = 0            # refusals counted into a summary instead of a record of their own

    def refused(self, identity: str, verb: str, reason: str, detail: dict, now: float) -> list[tuple]:
        key = (identity, verb, reason)
        out: list[tuple] = []
        w = self._open.get(key)
        if w is not None and now - w.start < self.window:
            w.count += 1
            self.suppressed += 1
            return out
        if w is not None:
            out.append(self._summary(key, self._open.pop(key)))
        self._open[key] = _Window(now, detail)
        out.append(("mqtt.refused", f"command:{verb}", {"identity": identity, "reason": reason, **detail}))
        while len(self._open) > self.keys:
            old_key, old = self._open.popitem(last=False)
            if old.count > 1:
                out.append(self._summary(old_key, old))
        return out

    def flush(self, now: float | None = None) -> list[tuple]:
        """Summaries of the windows that are over (all of them when ``now`` is None)."""
        out = []
        for key in list(self._open):
            w = self._open[key]
            if now is None or now - w.start >= self.window:
                del self._open[key]
                if w.count > 1:
                    out.append(self._summary(key, w))
        return out

    def _summary(self, key: tuple[str, str, str], w: _Window) -> tuple:
        identity, verb, reason = key
        return ("mqtt.refused.summary", f"command:{verb}",
                {"identity": identity, "reason": reason, "refused": w.count, "not_recorded_one_by_one": w.count - 1,
                 "window_s": self.window})
