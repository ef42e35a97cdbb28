"""The Art. 24(2) notice deadline: first day not counted, calendar days in Asia/Tokyo."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nocpolicy.maintenance.deadline import check_notice, days_between, notice_deadline

JST = ZoneInfo("Asia/Tokyo")


def jst(*a) -> dt.datetime:
    return dt.datetime(*a, tzinfo=JST)


@pytest.mark.parametrize("start, last_day", [
    (jst(2026, 1, 20, 1, 0), "2026-01-05"),        # the usual reading (first day not counted): start - 14 days would be 01-06, a day late
    (jst(2026, 1, 20, 0, 0), "2026-01-05"),        # midnight start: same calendar day
    (jst(2026, 1, 20, 23, 59), "2026-01-05"),
    (jst(2026, 3, 1, 2, 0), "2026-02-14"),         # month edge, February with 28 days
    (jst(2028, 3, 1, 2, 0), "2028-02-15"),         # leap year: 29 February counts
    (jst(2026, 1, 10, 2, 0), "2025-12-26"),        # year edge
    (jst(2026, 1, 1, 0, 0), "2025-12-17"),
    (jst(2026, 12, 31, 23, 0), "2026-12-16"),
    (jst(2026, 3, 9, 3, 0), "2026-02-22"),         # US DST starts 03-08: Tokyo has none, pure calendar
    (jst(2026, 3, 29, 3, 0), "2026-03-14"),        # EU DST starts 03-29
    (jst(2026, 11, 1, 3, 0), "2026-10-17"),        # US DST ends 11-01
    # given in UTC: the Tokyo calendar day decides (2026-01-19 15:30Z is 2026-01-20 00:30 JST)
    (dt.datetime(2026, 1, 19, 15, 30, tzinfo=dt.UTC), "2026-01-05"),
    (dt.datetime(2026, 1, 19, 14, 59, tzinfo=dt.UTC), "2026-01-04"),
])
def test_planned_last_day(start, last_day):
    d = notice_deadline("planned", start)
    assert d.last_day.isoformat() == last_day
    assert d.before == dt.datetime.combine(d.last_day + dt.timedelta(days=1), dt.time(0), tzinfo=JST)
    # exactly 14 whole days lie between the last lawful notice day and the start day
    assert days_between(d.before - dt.timedelta(microseconds=1), start) == 14
    assert days_between(d.before, start) == 13


@pytest.mark.parametrize("now, ok", [
    (jst(2026, 1, 1, 9, 0), True),
    (jst(2026, 1, 5, 0, 0), True),
    (jst(2026, 1, 5, 23, 59, 59), True),
    (jst(2026, 1, 6, 0, 0), False),                # start - 14 days: one day late
    (jst(2026, 1, 19, 12, 0), False),
    (dt.datetime(2026, 1, 5, 14, 59, tzinfo=dt.UTC), True),    # 23:59 JST
    (dt.datetime(2026, 1, 5, 15, 0, tzinfo=dt.UTC), False),    # 00:00 JST on the 6th
])
def test_planned_in_time_or_late(now, ok):
    v = check_notice("planned", jst(2026, 1, 20, 1, 0), now)
    assert v.ok is ok and v.late is (not ok)
    if not ok:
        assert "2026-01-05" in v.reason


def test_other_notice_period_and_timezone():
    assert notice_deadline("planned", jst(2026, 2, 1, 1), days=30).last_day == dt.date(2026, 1, 1)
    # a window at 2026-01-20 08:00 JST is 2026-01-19 in UTC: days counted in the configured zone
    assert notice_deadline("planned", jst(2026, 1, 20, 8), tz="UTC").last_day == dt.date(2026, 1, 4)


@pytest.mark.parametrize("now, urgent, why, ok, late", [
    (jst(2026, 1, 20, 0, 59), False, "", True, False),   # any time before the start
    (jst(2026, 1, 20, 1, 0), False, "", False, True),    # at the start is too late
    (jst(2026, 1, 20, 2, 0), True, "line card failed", True, True),
    (jst(2026, 1, 20, 2, 0), True, "  ", False, True),   # urgent needs a justification
])
def test_fault_before_start(now, urgent, why, ok, late):
    v = check_notice("fault", jst(2026, 1, 20, 1, 0), now, urgent=urgent, justification=why)
    assert (v.ok, v.late) == (ok, late)
    assert v.deadline.last_day is None


def test_urgent_planned_goes_out_late_with_justification():
    v = check_notice("planned", jst(2026, 1, 20, 1), jst(2026, 1, 15), urgent=True, justification="CVE on the BNG")
    assert v.ok and v.urgent and v.late and "proviso" in v.reason
    with pytest.raises(ValueError):
        notice_deadline("planned", dt.datetime(2026, 1, 20))


@given(st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2099, 12, 31)),
       st.integers(min_value=14, max_value=120))
def test_deadline_property(naive, days):
    start = naive.replace(tzinfo=JST)
    d = notice_deadline("planned", start, days=days)
    assert days_between(d.before - dt.timedelta(microseconds=1), start) == days
    assert d.met_by(d.before - dt.timedelta(microseconds=1)) and not d.met_by(d.before)
