"""Suspension decisions (pure): is a request acceptable, what is due now, when it is terminable."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ..errors import Conflict, Invalid
from ..maintenance.deadline import months_after
from ..subscribers.model import CAUSES, MODES

__all__ = ["CAUSES", "MODES", "Request", "check_request", "due_event", "terminable_at", "overlaps"]


@dataclass(frozen=True)
class Request:
    customer: str
    cause: str
    mode: str
    reason: str
    start: dt.datetime | None          # None: now (needs urgent)
    end: dt.datetime | None
    rate: int | None
    urgent: bool
    justification: str


def check_request(r: Request, now: dt.datetime, plan_down: int | None, plan_up: int | None,
                  has_contact: bool) -> dt.datetime:
    """The start of an acceptable request (``now`` when none was given); raises Invalid or
    Conflict naming the field otherwise. Overlaps are checked by :func:`overlaps`."""
    if r.cause not in CAUSES:
        raise Invalid(f"cause must be one of {', '.join(CAUSES)}, not {r.cause!r}", field="cause")
    if r.mode not in MODES:
        raise Invalid(f"mode must be one of {', '.join(MODES)}, not {r.mode!r}", field="mode")
    if r.urgent and not r.justification.strip():
        raise Invalid("an urgent suspension needs a justification (Art. 25: notice beforehand unless urgent)",
                      field="justification")
    start = r.start or now
    if r.start is None and not r.urgent:
        raise Invalid("give 'from' (a time after now: the notice goes out first), or mark it urgent with a "
                      "justification to start at once", field="from")
    if r.start is not None and r.start <= now and not r.urgent:
        raise Invalid(f"'from' {r.start.isoformat()} is not in the future: the notice must precede the "
                      "restriction (Art. 25); mark it urgent with a justification", field="from")
    if r.end is not None and r.end <= max(start, now):
        raise Invalid(f"'until' {r.end.isoformat()} must be after the start and after now", field="until")
    _check_rate(r, plan_down, plan_up)
    if not has_contact and not r.urgent:
        raise Conflict(f"customer {r.customer} has no fault contact to send the notice of reason and period "
                       "to (Art. 25); record one (contact.set) or mark the suspension urgent with a "
                       "justification", field="customer")
    return start


def _check_rate(r: Request, plan_down: int | None, plan_up: int | None) -> None:
    if r.mode == "throttle" and r.rate is None:
        raise Invalid("throttle needs a rate (e.g. 1mbit)", field="rate")
    if r.mode != "throttle" and r.rate is not None:
        raise Invalid(f"rate applies to mode throttle only, not {r.mode}", field="rate")
    if r.rate is not None:
        ceiling = min(x for x in (plan_down, plan_up) if x) if (plan_down or plan_up) else None
        if ceiling is not None and r.rate > ceiling:
            raise Invalid(f"rate {r.rate} bit/s is above the customer's plan ({ceiling} bit/s): a restriction "
                          "cannot raise a cap", field="rate")


def overlaps(start: dt.datetime, end: dt.datetime | None, rows: list[dict]) -> dict | None:
    """The first open suspension (scheduled/active rows of the same customer) whose period meets
    [start, end) (None = open-ended)."""
    for row in rows:
        s = dt.datetime.fromisoformat(row["start"])
        e = dt.datetime.fromisoformat(row["end"]) if row["end"] else None
        if (e is None or start < e) and (end is None or s < end):
            return row
    return None


def terminable_at(cause: str, start: dt.datetime, months: int, tz: str = "Asia/Tokyo") -> dt.datetime:
    """Art. 27(1): at once for nonpayment; otherwise when ``months`` calendar months from the day
    after the start (Civil Code arts. 140, 143) have passed: 00:00 local after the period's last day."""
    if cause == "nonpayment":
        return start
    zone = ZoneInfo(tz)
    last = months_after(start.astimezone(zone).date(), months)
    return dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=zone)


def due_event(row: dict, now: dt.datetime) -> str | None:
    """What a suspension row needs at ``now``: start | end | terminable | None (one at a time)."""
    state = row["state"]
    if state == "scheduled" and dt.datetime.fromisoformat(row["start"]) <= now:
        return "start"
    if state == "active":
        if row["end"] and dt.datetime.fromisoformat(row["end"]) <= now:
            return "end"
        if not row["terminable"] and dt.datetime.fromisoformat(row["terminable_at"]) <= now:
            return "terminable"
    return None


def next_due(rows: list[dict]) -> dt.datetime | None:
    """The earliest future moment any open row changes (the timer's wake-up)."""
    times = []
    for row in rows:
        if row["state"] == "scheduled":
            times.append(row["start"])
        elif row["state"] == "active":
            if row["end"]:
                times.append(row["end"])
            if not row["terminable"]:
                times.append(row["terminable_at"])
    return min((dt.datetime.fromisoformat(t) for t in times), default=None)
