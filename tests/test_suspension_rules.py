"""The pure parts of suspensions: the months calendar (Art. 26, 27; Civil Code arts. 140, 143),
when a suspension is terminable, what is due, and the request checks."""

from __future__ import annotations

import datetime as dt

import pytest

from nocpolicy.errors import Conflict, Invalid
from nocpolicy.maintenance.deadline import check_months_notice, last_notice_day_months, months_after
from nocpolicy.suspension.rules import (
    Request,
    check_request,
    due_event,
    next_due,
    overlaps,
    terminable_at,
)

D = dt.date
JST = dt.timezone(dt.timedelta(hours=9))

# (effective date, last day on which 3 months' notice is in time) -- the table in docs/suspension.md
ABOLITION_TABLE = [
    (D(2026, 7, 1), D(2026, 3, 31)),     # plain: the period 04-01 .. 06-30 ends before 07-01
    (D(2026, 6, 1), D(2026, 2, 28)),     # February's last day
    (D(2027, 3, 1), D(2026, 11, 30)),    # from 12-01: 3 months end on 02-28
    (D(2028, 2, 29), D(2027, 11, 28)),   # leap day: from 11-29 the period ends 02-28
    (D(2028, 3, 1), D(2027, 11, 30)),    # from 12-01 the period ends on 02-29 (leap year)
    (D(2026, 10, 1), D(2026, 6, 30)),    # 31st -> 30th: from 07-01 the period ends 09-30
    (D(2026, 9, 30), D(2026, 6, 29)),    # from 06-30 the period ends 09-29
    (D(2027, 1, 1), D(2026, 9, 30)),     # year end
]

# (event day, months, last day of the period counted from the next day)
PERIODS = [
    (D(2026, 11, 29), 3, D(2027, 2, 28)),    # starts 11-30: no Feb 30 -> last day of February
    (D(2026, 11, 30), 3, D(2027, 2, 28)),    # starts 12-01: corresponding day 03-01, minus one
    (D(2026, 12, 31), 2, D(2027, 2, 28)),
    (D(2027, 12, 30), 2, D(2028, 2, 29)),    # starts 12-31: no Feb 31 -> Feb 29 in a leap year
    (D(2026, 1, 31), 2, D(2026, 3, 31)),     # starts 02-01: corresponding day 04-01, minus one
    (D(2026, 3, 30), 3, D(2026, 6, 30)),     # starts 03-31: no June 31 -> June 30
]


@pytest.mark.parametrize(("effective", "last"), ABOLITION_TABLE)
def test_abolition_notice_table(effective, last):
    assert last_notice_day_months(effective, 3) == last
    # the day itself is in time, the next day is not (checked through the whole rule)
    assert months_after(last, 3) < effective <= months_after(last + dt.timedelta(days=1), 3)
    ok = check_months_notice(effective, dt.datetime.combine(last, dt.time(23, 59), tzinfo=JST), 3)
    late = check_months_notice(effective, dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=JST), 3)
    assert ok.ok and not late.ok and last.isoformat() in late.reason


@pytest.mark.parametrize(("event", "months", "end"), PERIODS)
def test_months_periods(event, months, end):
    assert months_after(event, months) == end


def test_terminable_at():
    start = dt.datetime(2026, 3, 31, 10, 0, tzinfo=JST)
    assert terminable_at("nonpayment", start, 2) == start
    assert terminable_at("obligations", start, 2) == dt.datetime(2026, 6, 1, 0, 0, tzinfo=JST)
    start = dt.datetime(2026, 12, 31, 23, 0, tzinfo=JST)
    assert terminable_at("prohibited-use", start, 2) == dt.datetime(2027, 3, 1, 0, 0, tzinfo=JST)


def _req(**kw) -> Request:
    d = dict(customer="c1", cause="obligations", mode="walled-garden", reason="r",
             start=dt.datetime(2026, 3, 3, tzinfo=JST), end=None, rate=None, urgent=False, justification="")
    d.update(kw)
    return Request(**d)


NOW = dt.datetime(2026, 3, 2, tzinfo=JST)


@pytest.mark.parametrize(("changes", "kind", "field"), [
    ({"start": None}, Invalid, "from"),
    ({"start": NOW}, Invalid, "from"),
    ({"urgent": True}, Invalid, "justification"),
    ({"end": dt.datetime(2026, 3, 3, tzinfo=JST)}, Invalid, "until"),
    ({"mode": "throttle"}, Invalid, "rate"),
    ({"rate": 1000}, Invalid, "rate"),
    ({"mode": "throttle", "rate": 200_000_000}, Invalid, "rate"),
    ({"cause": "late"}, Invalid, "cause"),
])
def test_request_refusals_name_the_field(changes, kind, field):
    with pytest.raises(kind) as e:
        check_request(_req(**changes), NOW, 100_000_000, 20_000_000, True)
    assert e.value.field == field


def test_request_needs_a_contact_unless_urgent():
    with pytest.raises(Conflict) as e:
        check_request(_req(), NOW, None, None, False)
    assert e.value.field == "customer"
    assert check_request(_req(start=None, urgent=True, justification="j"), NOW, None, None, False) == NOW
    assert check_request(_req(mode="throttle", rate=10_000_000), NOW, 100_000_000, 20_000_000, True)


def test_due_events_and_overlaps():
    row = {"state": "scheduled", "start": "2026-03-03T00:00:00+00:00", "end": "2026-03-04T00:00:00+00:00",
           "terminable": 0, "terminable_at": "2026-03-03T12:00:00+00:00"}
    t = dt.datetime.fromisoformat
    assert due_event(row, t("2026-03-02T23:59:59+00:00")) is None
    assert due_event(row, t("2026-03-03T00:00:00+00:00")) == "start"
    active = {**row, "state": "active"}
    assert due_event(active, t("2026-03-03T11:00:00+00:00")) is None
    assert due_event(active, t("2026-03-03T12:00:00+00:00")) == "terminable"
    assert due_event({**active, "terminable": 1}, t("2026-03-04T00:00:00+00:00")) == "end"
    assert next_due([row, active]) == t("2026-03-03T00:00:00+00:00")
    assert overlaps(t("2026-03-03T23:00:00+00:00"), None, [row]) is row
    assert overlaps(t("2026-03-04T00:00:00+00:00"), None, [row]) is None
    assert overlaps(t("2026-03-01T00:00:00+00:00"), t("2026-03-03T00:00:00+00:00"), [row]) is None


def test_walled_answer_cuts_a_long_reason_on_a_character_boundary():
    import dns.edns
    import dns.message

    from nocpolicy.dns.walled import WalledGarden
    from nocpolicy.dns.wire import parse_query
    from nocpolicy.subscribers.model import Suspended
    q = dns.message.make_query("www.example.test", "A", use_edns=0)
    data = q.to_wire()
    w = WalledGarden(a=bytes([192, 0, 2, 80]), allow=frozenset({"pay.example"}))
    s = Suspended(1, "walled-garden", "nonpayment", "未払い" * 100, "2026-03-02T00:00:00+00:00")
    r = dns.message.from_wire(w.answer(data, parse_query(data), s))
    (opt,) = [o for o in r.options if isinstance(o, dns.edns.EDEOption)]
    assert opt.code == 17 and opt.text.startswith("suspended (nonpayment): 未払い") and len(opt.text.encode()) <= 200
    assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["192.0.2.80"] and r.answer[0].ttl == 0
    assert w.allowed(s, ["shop.pay.example", "pay.example", "example"])
    assert not w.allowed(s, ["www.example.test", "example.test", "test"])
    assert not w.allowed(Suspended(1, "block", "nonpayment", "r", "t"), ["pay.example", "example"])
    assert w.allowed(Suspended(1, "throttle", "nonpayment", "r", "t", rate=10**6), ["www.example.test"])
