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


# -- periods in months (Art. 26 abolition notice, Art. 27(1) two months) ------------------------
#
# Civil Code art. 140: the first day is not counted (the period starts the next day);
# art. 143: a period in months is counted by the calendar and ends on the day before the
# day of the last month that corresponds to the starting day; if the last month has no such
# day (31st -> a 30-day month, 29th-31st -> February), it ends on that month's last day.


def _month_day(year: int, month: int, day: int) -> dt.date | None:
    """The date, or None when the month has no such day."""
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def months_period_end(start_day: dt.date, months: int) -> dt.date:
    """The last day of a period of ``months`` months that begins on ``start_day`` (art. 143(2))."""
    y, m = divmod(start_day.month - 1 + months, 12)
    year, month = start_day.year + y, m + 1
    same = _month_day(year, month, start_day.day)
    if same is None:                                     # no corresponding day: the month's last day
        nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
        return nxt - dt.timedelta(days=1)
    return same - dt.timedelta(days=1)


def months_after(event: dt.date, months: int) -> dt.date:
    """The last day of ``months`` months counted from the day after ``event`` (day of event not counted)."""
    return months_period_end(event + dt.timedelta(days=1), months)


def last_notice_day_months(effective: dt.date, months: int) -> dt.date:
    """The last day on which notice may be given for something taking effect on ``effective``
    with ``months`` months' notice: the whole period (from the day after the notice) must end
    before ``effective``. Bounded search backwards (at most 40 days past the naive answer)."""
    y, m = divmod(effective.month - 1 - months, 12)
    guess = _month_day(effective.year + y, m + 1, min(effective.day, 28)) or effective
    day = guess + dt.timedelta(days=10)
    for _ in range(60):
        if months_after(day, months) < effective:
            return day
        day -= dt.timedelta(days=1)
    raise ValueError(f"no notice day found for {effective}")      # unreachable for months >= 1


def check_months_notice(effective: dt.date, now: dt.datetime, months: int, tz: str = "Asia/Tokyo") -> NoticeCheck:
    """May notice given at ``now`` announce something taking effect on ``effective`` (a local
    date) with ``months`` months' notice (Art. 26: three)?"""
    zone = ZoneInfo(tz)
    last = last_notice_day_months(effective, months)
    d = Deadline(f"{months}-months", last, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=zone),
                 tz)
    if d.met_by(now):
        return NoticeCheck(True, d, False, False, f"in time: {d.describe()}")
    return NoticeCheck(False, d, True, False, f"too late for {effective.isoformat()}: {d.describe()} "
                       f"({months} months' notice, the day of notice not counted)")
