"""Suspensions end to end in one daemon (Art. 25, 27): prior notice through the real SMTP server,
timed start and end by the injected clock, the walled garden in the DNS guard, the notice
page, refusals naming the field, Art. 27 terminable and terminate, restarts."""

from __future__ import annotations

import datetime as dt

import pytest

from helpers import free_port
from nocpolicy.clock import ManualClock
from nocpolicy.errors import CommandError
from suspension_fixtures import (
    PAGE_A,
    PAGE_AAAA,
    T0,
    UNBOUND_DATA,
    Unbound,
    addresses,
    ede,
    policy_dir,
    start_daemon,
    until,
)
from test_maintenance_smtp import SmtpSink

HOUR = dt.timedelta(hours=1)


def mails(sink, to: str) -> list[dict]:
    return [m for m in sink.messages if to in m["rcpt"]]


def without_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def text_of(m) -> str:
    msg = m["msg"]
    return f"{msg['Subject']}\n{msg.get_body(('plain',)).get_content()}"


@pytest.fixture
def env(tmp_path):
    with SmtpSink() as sink:
        ub = Unbound(tmp_path, UNBOUND_DATA).start()
        try:
            page_port = free_port()
            pol = policy_dir(tmp_path, ub.port, sink.port, page_port)
            yield pol, tmp_path / "state", sink, page_port
        finally:
            ub.stop()


async def test_walled_garden_notice_start_end_and_page(env):
    pol, state, sink, page_port = env
    clock = ManualClock(T0)
    r = await start_daemon(pol, state, clock, page_port)
    try:
        assert addresses(await r.ask("www.example.test")) == ["198.51.100.7"]
        out = await r.cmd("suspension.suspend", customer="c-home", cause="obligations", mode="walled-garden",
                          reason="未払いの違約金 / unpaid penalty", **{"from": "2026-03-02T12:00+09:00",
                                                                       "until": "2026-03-05T12:00+09:00"})
        s = out["suspension"]
        assert s["state"] == "scheduled" and s["terminable_at"] == "2026-05-02T15:00:00+00:00"
        # the notice of reason and period goes out before the start, in the contact's languages
        m = (await until(lambda: mails(sink, "home@customer.example"), what="notice"))[0]
        body = text_of(m)
        assert "unpaid penalty" in body and "2026-03-02 12:00 JST - 2026-03-05 12:00 JST" in body
        assert "ご利用の停止・制限のお知らせ" in body and "Notice of suspension" in body
        assert "サポート 0120-000-000" in body and "support +81-120-000-000" in body
        # not yet started: DNS as usual
        assert addresses(await r.ask("www.example.test")) == ["198.51.100.7"]
        assert r.metric("nocpolicy_suspensions", mode="walled-garden", state="scheduled") == 1

        clock.set(dt.datetime(2026, 3, 2, 3, 0, tzinfo=dt.UTC))         # 12:00 JST: the timer starts it
        await until(lambda: r.metric("nocpolicy_suspensions", mode="walled-garden", state="active") == 1,
                    what="started by the clock")
        a = await r.ask("www.example.test")
        assert addresses(a) == [PAGE_A] and ede(a) == [(17, "suspended (obligations): 未払いの違約金 / unpaid penalty")]
        assert a.answer[0].ttl == 0
        assert addresses(await r.ask("www.example.test", "AAAA")) == [PAGE_AAAA]
        mx = await r.ask("www.example.test", "MX")
        assert mx.answer == [] and ede(mx)[0][0] == 17
        # the allow list (and its subdomains) resolves normally; another customer is untouched
        assert addresses(await r.ask("pay.isp.test")) == ["198.51.100.9"]
        assert addresses(await r.ask("shop.pay.isp.test")) == ["198.51.100.10"]
        assert addresses(await r.ask("www.example.test", source="127.0.0.2")) == ["198.51.100.7"]
        # the notice page: any Host, any path; captive-portal probes get the page, not their 204
        status, html = await r.page("/some/path?x=1", host="news.example")
        assert status == 200 and "unpaid penalty" in html and "2026-03-05 12:00 JST" in html
        status, html = await r.page("/generate_204", host="connectivitycheck.gstatic.com")
        assert status == 200 and "Home customer" not in html and "c-home" in html
        status, html = await r.page("/", source="127.0.0.2")
        assert status == 200 and "not restricted" in html
        await until(lambda: len(mails(sink, "home@customer.example")) == 2, what="started notice")

        clock.set(dt.datetime(2026, 3, 5, 3, 0, tzinfo=dt.UTC))         # its end
        await until(lambda: r.metric("nocpolicy_suspensions", mode="walled-garden", state="ended") == 1,
                    what="ended by the clock")
        assert addresses(await r.ask("www.example.test")) == ["198.51.100.7"]
        await until(lambda: len(mails(sink, "home@customer.example")) == 3, what="ended notice")
        assert "Service resumed" in text_of(mails(sink, "home@customer.example")[-1])
        listing = await r.cmd("suspension.list", customer="c-home")
        assert [(i["customer"], i["mode"], i["seconds"]) for i in listing["impacts"]] == [
            ("c-home", "walled-garden", 3 * 86400.0)]
        audit = [a["action"] for a in r.d.ctx.store.audit_log(subject="customer:c-home")]
        assert audit[:3] == ["suspension.end", "suspension.start", "suspension.add"]
    finally:
        await r.stop()


async def test_bad_input_is_refused_naming_the_field(env):
    pol, state, sink, page_port = env
    r = await start_daemon(pol, state, ManualClock(T0), page_port)
    base = {"customer": "c-home", "cause": "nonpayment", "mode": "walled-garden", "reason": "unpaid",
            "from": "2026-03-03T00:00+09:00"}

    async def refused(status: int, field: str, match: str, **changes):
        with pytest.raises(CommandError, match=match) as e:
            await r.cmd("suspension.suspend", **without_none({**base, **changes}))
        assert (e.value.status, e.value.field) == (status, field)
    try:
        await refused(404, "customer", "unknown customer", customer="c-nobody")
        await refused(400, "from", "not in the future", **{"from": "2026-03-01T00:00+09:00"})
        await refused(400, "from", "give 'from'", **{"from": None})
        await refused(400, "justification", "justification", urgent=True)
        await refused(400, "rate", "above the customer's plan", mode="throttle", rate="50mbit")
        await refused(400, "mode", "one of", mode="slow")
        await refused(400, "cause", "one of", cause="late")
        await refused(400, "reason", "at most 500", reason="未" * 501)
        await refused(400, "until", "after the start", until="2026-03-02T12:00+09:00")
        await refused(409, "customer", "no fault contact", customer="c-nocontact")
        await r.cmd("suspension.suspend", **{**base, "until": "2026-03-10T00:00+09:00"})
        await refused(409, "from", "overlapping", **{"from": "2026-03-09T00:00+09:00"})
        # urgent with a justification: no contact needed, starts at once
        out = await r.cmd("suspension.suspend", **without_none({**base, "customer": "c-nocontact", "from": None,
                                                                "urgent": True,
                                                                "justification": "attack traffic from the line"}))
        assert out["suspension"]["state"] == "active"
        with pytest.raises(CommandError) as e:
            await r.cmd("suspension.resume", customer="c-two")
        assert (e.value.status, e.value.field) == (404, "customer")
    finally:
        await r.stop()


async def test_nonpayment_is_terminable_at_once_and_terminate_sends_notice(env):
    pol, state, sink, page_port = env
    clock = ManualClock(T0)
    r = await start_daemon(pol, state, clock, page_port)
    events = r.d.events.subscribe()
    try:
        await r.cmd("suspension.suspend", customer="c-two", cause="nonpayment", mode="block", reason="invoice 42",
                    urgent=True, justification="third reminder unanswered")
        await until(lambda: r.metric("nocpolicy_suspensions_terminable") == 1, what="terminable")
        got = []

        def terminable_event():
            # the metric reads the store, which has the change a moment before the event is published
            while not events.empty():
                got.append(events.get_nowait())
            return any(e.kind == "suspension" and e.payload["event"] == "terminable" for e in got)
        await until(terminable_event, what="the terminable event")
        assert [e.payload["event"] for e in got if e.kind == "suspension"] == ["add", "terminable"]
        listed = await r.cmd("suspension.list", terminable=True)
        assert [s["customer"] for s in listed["suspensions"]] == ["c-two"]
        # block: every name answers the notice page, the allow list included
        assert addresses(await r.ask("pay.isp.test", source="127.0.0.2")) == [PAGE_A]
        out = await r.cmd("suspension.terminate", customer="c-two", reason="no payment after two months")
        assert out["suspension"]["state"] == "terminated"
        m = await until(lambda: [x for x in mails(sink, "two@customer.example") if "termination" in
                                 str(x["msg"]["Subject"])], what="Art. 27(2) notice")
        assert "Art. 27(2)" in text_of(m[0]) and "ご契約" not in text_of(m[0])      # contact language: en
    finally:
        await r.stop()


async def test_two_months_then_terminable_and_survives_restart(env):
    pol, state, sink, page_port = env
    clock = ManualClock(T0)
    r = await start_daemon(pol, state, clock, page_port)
    try:
        out = await r.cmd("suspension.suspend", customer="c-home", cause="prohibited-use", mode="walled-garden",
                          reason="spam relay", **{"from": "2026-03-31T10:00+09:00"})
        # started 2026-03-31: the period runs 04-01 .. 05-31 (31st -> no 31 June issue: May has 31)
        assert out["suspension"]["terminable_at"] == "2026-05-31T15:00:00+00:00"
        with pytest.raises(CommandError, match="not terminable"):
            clock.set(dt.datetime(2026, 3, 31, 1, 0, tzinfo=dt.UTC))
            await until(lambda: r.metric("nocpolicy_suspensions", mode="walled-garden", state="active") == 1,
                        what="active")
            await r.cmd("suspension.terminate", customer="c-home", reason="x")
    finally:
        await r.stop()
    # a restart: the suspension is still enforced from the first query
    r = await start_daemon(pol, state, clock, page_port)
    try:
        assert addresses(await r.ask("www.example.test")) == [PAGE_A]
        clock.set(dt.datetime(2026, 5, 31, 14, 59, tzinfo=dt.UTC))
        assert await r.comp.tick() == 0
        clock.set(dt.datetime(2026, 5, 31, 15, 0, tzinfo=dt.UTC))
        await until(lambda: r.metric("nocpolicy_suspensions_terminable") == 1, what="terminable after 2 months")
        await r.cmd("suspension.resume", customer="c-home", reason="customer stopped the relay")
        assert addresses(await r.ask("www.example.test")) == ["198.51.100.7"]
    finally:
        await r.stop()


async def test_abolition_announce_checks_three_months_and_notifies_every_customer(env):
    pol, state, sink, page_port = env
    r = await start_daemon(pol, state, ManualClock(T0), page_port)       # 2026-03-02 09:00 JST
    try:
        with pytest.raises(CommandError, match="2026-03-01") as e:      # 06-02 needed notice by 03-01
            await r.cmd("abolition.announce", scope={"plans": ["home"]}, date="2026-06-02", reason="end of ADSL")
        assert (e.value.status, e.value.field) == (409, "date")
        with pytest.raises(CommandError) as e:
            await r.cmd("abolition.announce", scope={"tags": ["nobody"]}, date="2026-07-01", reason="x")
        assert e.value.field == "scope"
        with pytest.raises(CommandError, match="not a date") as e:
            await r.cmd("abolition.announce", scope={"plans": ["home"]}, date="July 1st", reason="x")
        assert (e.value.status, e.value.field) == (400, "date")
        out = await r.cmd("abolition.announce", scope={"plans": ["home"]}, date="2026-06-03",
                          reason="end of the Home plan", service="Home plan")
        assert out["customers"] == ["c-home", "c-two", "c-nocontact"] and out["notices_queued"] == 3
        assert out["deadline"]["deadline"]["last_day"] == "2026-03-02"
        await until(lambda: mails(sink, "home@customer.example") and mails(sink, "two@customer.example"),
                    what="abolition notices")
        body = text_of(mails(sink, "home@customer.example")[0])
        assert "2026-06-03" in body and "Home plan" in body and "サービス廃止" in body
        assert r.metric("nocpolicy_suspension_notices", kind="abolition", state="failed") == 1   # no contact
    finally:
        await r.stop()
