"""Notice deadlines (Art. 24(2)): pure calendar arithmetic, no clock, no I/O.

Planned work (Art. 24(1)(1)) needs notice "at least N days before" the start,
counted in calendar days in the operator's time zone (Asia/Tokyo) with the first
day not counted (初日不算入): at least N whole days must lie strictly between
the day of notice and the day the window starts. A window starting on
2026-01-20 therefore needs notice on 2026-01-05 at the latest (01-06 .. 01-19
are the 14 days in between); ``start - 14 days`` would give 01-06, one day late.

A fault (Art. 24(1)(2)) needs notice before the start. Either may go out late
only when urgent and unavoidable (proviso), with a recorded justification.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

PLANNED_DAYS = 14


@dataclass(frozen=True)
class Deadline:
    kind: str
    last_day: dt.date | None      # last calendar day (local) on which notice is in time; None for faults
    before: dt.datetime           # notice must be sent strictly before this instant (aware)
    tz: str

    def met_by(self, when: dt.datetime) -> bool:
        return when < self.before

    def describe(self) -> str:
        if self.last_day is not None:
            return f"notice by {self.last_day.isoformat()} ({self.tz}) at the latest"
        local = self.before.astimezone(ZoneInfo(self.tz))
        return f"notice before the start {local.strftime('%Y-%m-%d %H:%M %Z')}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "last_day": self.last_day.isoformat() if self.last_day else None,
                "before": self.before.isoformat(), "tz": self.tz, "text": self.describe()}


def notice_deadline(kind: str, start: dt.datetime, *, days: int = PLANNED_DAYS,
                    tz: str = "Asia/Tokyo") -> Deadline:
    """The deadline for a window of ``kind`` starting at ``start`` (aware)."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    zone = ZoneInfo(tz)
    if kind == "fault":
        return Deadline(kind, None, start, tz)
    if kind != "planned":
        raise ValueError(f"unknown window kind {kind!r}")
    start_day = start.astimezone(zone).date()
    last_day = start_day - dt.timedelta(days=days + 1)
    # Notice is in time up to the end of last_day, i.e. before midnight starting the next day.
    before = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return Deadline(kind, last_day, before, tz)


def days_between(notice: dt.datetime, start: dt.datetime, tz: str = "Asia/Tokyo") -> int:
    """Whole calendar days strictly between the day of ``notice`` and the day of ``start``."""
    zone = ZoneInfo(tz)
    return (start.astimezone(zone).date() - notice.astimezone(zone).date()).days - 1


@dataclass(frozen=True)
class NoticeCheck:
    ok: bool
    deadline: Deadline
    late: bool             # the deadline has passed at ``now``
    urgent: bool           # sent under the Art. 24(2) proviso
    reason: str

    def as_dict(self) -> dict:
        return {"ok": self.ok, "late": self.late, "urgent": self.urgent, "reason": self.reason,
                "deadline": self.deadline.as_dict()}


def check_notice(kind: str, start: dt.datetime, now: dt.datetime, *, urgent: bool = False,
                 justification: str = "", days: int = PLANNED_DAYS, tz: str = "Asia/Tokyo") -> NoticeCheck:
    """May a notice sent at ``now`` lawfully announce a window of ``kind`` starting at ``start``?"""
    d = notice_deadline(kind, start, days=days, tz=tz)
    if d.met_by(now):
        return NoticeCheck(True, d, False, False, f"in time: {d.describe()}")
    if urgent and justification.strip():
        return NoticeCheck(True, d, True, True,
                           f"late ({d.describe()}), sent at once as urgent (Art. 24(2) proviso)")
    if urgent:
        return NoticeCheck(False, d, True, True, "an urgent window needs a recorded justification "
                           "(Art. 24(2) proviso)")
    return NoticeCheck(False, d, True, False,
                       f"the notice deadline has passed: {d.describe()}; mark the window urgent with "
                       "a justification if the work cannot wait (Art. 24(2) proviso)")
