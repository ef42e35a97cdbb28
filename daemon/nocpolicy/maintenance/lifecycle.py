"""The window state machine as a table, and what is due at a given time (pure).

    scheduled --notify--> notified --start--> active --end--> completed
        |                    |                   |
        +------cancel--------+---> cancelled     +--cancel--> completed (ended early)

``scheduled`` means the window exists but its notices are not yet queued (a
policy window waiting for its notice, or a window created with notices held);
``notified`` means the notices are committed to the outbox (delivery itself is
tracked per notice). A window may start from ``scheduled`` (the start arrived
before notices were queued: the component then queues them as late notices).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

STATES = ("scheduled", "notified", "active", "completed", "cancelled")
FINAL = ("completed", "cancelled")

# (state, event) -> next state. Anything not in the table is refused.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("scheduled", "notify"): "notified",
    ("scheduled", "update"): "scheduled",
    ("scheduled", "start"): "active",
    ("scheduled", "cancel"): "cancelled",
    ("notified", "update"): "notified",
    ("notified", "remind"): "notified",
    ("notified", "start"): "active",
    ("notified", "cancel"): "cancelled",
    ("active", "update"): "active",
    ("active", "end"): "completed",
    ("active", "cancel"): "completed",
}

# The notice each event sends to the affected customers, and whether it raises the
# iCalendar SEQUENCE (a reminder repeats the current one).
NOTICE_FOR: dict[str, tuple[str, bool]] = {
    "notify": ("notice", False),
    "update": ("update", True),
    "remind": ("reminder", False),
    "start": ("started", True),
    "end": ("completed", True),
    "cancel": ("cancelled", True),
}

# BCOP X-MAINTNOTE-STATUS per notice kind.
BCOP_STATUS = {"notice": "CONFIRMED", "update": "CONFIRMED", "reminder": "CONFIRMED",
               "started": "IN-PROCESS", "completed": "COMPLETED", "cancelled": "CANCELLED"}


class TransitionRefused(Exception):
    pass


def next_state(state: str, event: str) -> str:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        allowed = sorted(e for (s, e) in TRANSITIONS if s == state)
        raise TransitionRefused(f"a {state} window cannot {event}"
                                + (f" (possible: {', '.join(allowed)})" if allowed else "")) from None


@dataclass(frozen=True)
class Timing:
    state: str
    start: dt.datetime
    end: dt.datetime
    reminded: bool


def due_event(w: Timing, now: dt.datetime, reminder_before: float) -> str | None:
    """The one event due for window ``w`` at ``now`` (call again after applying it)."""
    if w.state in ("scheduled", "notified") and now >= w.start:
        return "start"
    if w.state == "active" and now >= w.end:
        return "end"
    if (w.state == "notified" and not w.reminded and reminder_before > 0
            and now >= w.start - dt.timedelta(seconds=reminder_before)):
        return "remind"
    return None


def next_wake(w: Timing, now: dt.datetime, reminder_before: float) -> dt.datetime | None:
    """When something will next be due for ``w`` (None if never)."""
    if w.state in FINAL:
        return None
    if w.state == "active":
        return w.end
    times = [w.start]
    if w.state == "notified" and not w.reminded and reminder_before > 0:
        times.append(w.start - dt.timedelta(seconds=reminder_before))
    later = [t for t in times if t > now]
    return min(later) if later else now
