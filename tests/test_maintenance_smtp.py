"""Notice delivery through a real SMTP server (aiosmtpd on 127.0.0.1), in process with a manual clock.

Also home of the shared pieces the other maintenance tests import: SmtpSink and
the in-process component harness.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import json
import os
import time
from email import policy as email_policy
from pathlib import Path

import icalendar
import pytest
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry

from helpers import copy_policies, free_port
from nocpolicy.clock import ManualClock
from nocpolicy.component import Context
from nocpolicy.control.commands import CommandRegistry
from nocpolicy.errors import CommandError, NocpolicyError
from nocpolicy.events import EventBus
from nocpolicy.maintenance.component import Maintenance
from nocpolicy.maintenance.smtp import classify
from nocpolicy.policy.diff import diff_policies
from nocpolicy.policy.load import load_policy
from nocpolicy.store import Store

T0 = dt.datetime(2026, 1, 1, 0, 0, tzinfo=dt.UTC)       # 09:00 JST
ARCHIVE = "archive@noc.example"


class SmtpSink:
    """A real SMTP server: refuses some recipients (550), delays some (451), can be slow in DATA."""

    def __init__(self, refuse=(), tempfail=(), delay: float = 0.0, slow: tuple[int, ...] = ()):
        self.refuse, self.tempfail, self.delay = set(refuse), set(tempfail), delay
        self.slow = set(slow)        # DATA ordinals (1-based) that take ``delay``; empty: all of them
        self.messages: list[dict] = []
        self.data_started = 0
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        if address in self.tempfail:
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.data_started += 1
        if self.delay and (not self.slow or self.data_started in self.slow):
            await asyncio.sleep(self.delay)      # cancelled by aiosmtpd if the client goes away
        msg = email.message_from_bytes(envelope.content, policy=email_policy.default)
        self.messages.append({"id": msg["Message-ID"], "rcpt": list(envelope.rcpt_tos), "msg": msg})
        return "250 2.0.0 accepted"

    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]


def smtp_yaml(port: int, extra: str = "") -> str:
    return (f"maintenance:\n  notice:\n    planned_days: 14\n    reminder_before: 24h\n"
            f"  smtp:\n    host: 127.0.0.1\n    port: {port}\n    from: noc@isp.example\n"
            f"    timeout: 5s\n    copy_to: [{ARCHIVE}]\n{extra}")


class Harness:
    """The real Maintenance component on a real store, with a manual clock and the command registry."""

    def __init__(self, tmp_path: Path, smtp_port: int | None, start: dt.datetime = T0):
        self.dir = copy_policies(tmp_path)
        if smtp_port:
            (self.dir / "maintenance.yaml").write_text(smtp_yaml(smtp_port))
        self.policy = load_policy(self.dir)
        self.clock = ManualClock(start)
        self.events = EventBus()
        self.queue = self.events.subscribe()
        self.registry = CollectorRegistry()
        self.store = Store(tmp_path / "state.db")
        self.ctx = Context(options=None, store=self.store, clock=self.clock, events=self.events,
                           registry=self.registry, policy=lambda: self.policy)
        self.comp = Maintenance(self.ctx)
        self.commands = CommandRegistry()
        for c in self.comp.commands():
            self.commands.register(c)
        for col in self.comp.collectors():
            self.registry.register(col)

    async def start(self):
        commit = await self.comp.prepare(self.policy, diff_policies(None, self.policy))
        commit()
        await self.comp.start()
        return self

    async def stop(self):
        await self.comp.stop()
        self.store.close()

    async def cmd(self, name: str, **payload) -> dict:
        return await self.commands.dispatch(name, payload, actor="test", source="test")

    def metric(self, name: str, **labels) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def drain(self) -> list:
        out = []
        while not self.queue.empty():
            out.append(self.queue.get_nowait())
        return out


async def until(pred, limit: float = 30.0, what: str = "condition"):
    """Poll with a deadline (async twin of helpers.wait_for); generous, because a busy machine
    can hold the event loop for seconds and the deadline only bounds a failing run."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise TimeoutError(f"timed out after {limit}s waiting for {what}")


def window(wid: str, start: str, end: str, **kw) -> dict:
    d = {"id": wid, "kind": "planned", "start": start, "end": end,
         "reason": {"ja": "コアルータのソフトウェア更新", "en": "core router software upgrade"},
         "scope": {"tags": ["tokyo-east"]}, "impact": "OUTAGE"}
    d.update(kw)
    return d


# ---------------------------------------------------------------------------------------------------

async def test_refused_recipient_is_a_failure_even_when_the_archive_copy_is_accepted(tmp_path):
    with SmtpSink(refuse={"fault@yamada.example"}) as sink:
        h = await Harness(tmp_path, sink.port).start()
        try:
            out = await h.cmd("maintenance.add", **window("mw-1", "2026-01-20T01:00", "2026-01-20T05:00"))
            assert out["notices_queued"] == 2 and out["customers"] == ["c1001", "c1002"]
            # c1002's notice arrives; c1001's is refused (550) while the archive copy is accepted
            await until(lambda: len(sink.messages) == 2, what="two SMTP transactions")
            notices = {n["customer"]: n for n in (await h.cmd("notices", window="mw-1"))["notices"]}
            await until(lambda: h.store.one("SELECT COUNT(*) n FROM mw_outbox WHERE state IN ('pending','sending')")
                        ["n"] == 0, what="outbox settled")
            notices = {n["customer"]: n for n in (await h.cmd("notices", window="mw-1"))["notices"]}
            bad, good = notices["c1001"], notices["c1002"]
            assert bad["state"] == "failed" and "550" in bad["last_error"]
            assert bad["result"]["fault@yamada.example"].startswith("550")
            assert bad["result"][ARCHIVE].startswith("250")
            assert good["state"] == "sent" and good["contact_version"] == 1
            refused_msg = next(m for m in sink.messages if m["id"] == bad["message_id"])
            assert refused_msg["rcpt"] == [ARCHIVE]
            assert h.metric("nocpolicy_notices_total", kind="notice", result="failed") == 1
            assert h.metric("nocpolicy_notices_total", kind="notice", result="sent") == 1

            # Art. 24(4): the customer reports a new fault contact; the failed notice goes to it,
            # recording contact version 2, with the same Message-ID.
            sink.messages.clear()
            res = await h.cmd("contact.set", customer="c1001", email="noc@yamada.example", reason="moved office")
            assert res["contact"]["version"] == 2 and res["notices_retargeted"] == 1
            await until(lambda: len(sink.messages) == 1, what="retargeted notice")
            assert sink.messages[0]["id"] == bad["message_id"]
            assert sink.messages[0]["rcpt"] == ["noc@yamada.example"]     # the archive has its copy already
            row = h.store.one("SELECT * FROM mw_outbox WHERE message_id=?", (bad["message_id"],))
            await until(lambda: h.store.one("SELECT state FROM mw_outbox WHERE id=?", (row["id"],))["state"]
                        == "sent", what="sent state")
            row = h.store.one("SELECT * FROM mw_outbox WHERE id=?", (row["id"],))
            assert row["contact_version"] == 2 and row["recipient"] == "noc@yamada.example"
            hist = await h.cmd("contact.show", customer="c1001")
            assert [v["version"] for v in hist["history"]] == [1, 2]
            assert hist["history"][0]["email"] == "fault@yamada.example"
            assert hist["current"]["actor"] == "test"
        finally:
            await h.stop()


async def test_temporary_failure_retries_with_backoff(tmp_path):
    with SmtpSink(tempfail={"noc@sakura-design.example"}) as sink:
        h = await Harness(tmp_path, sink.port).start()
        try:
            await h.cmd("maintenance.add", **window("mw-2", "2026-01-20T01:00", "2026-01-20T05:00",
                                                    scope={"customers": ["c1002"]}))

            def row():
                return h.store.one("SELECT * FROM mw_outbox WHERE window_id='mw-2'")
            await until(lambda: row()["attempts"] == 1 and row()["state"] == "pending", what="first attempt")
            r = row()
            assert "451" in r["last_error"]
            assert dt.datetime.fromisoformat(r["next_attempt"]) == T0 + dt.timedelta(seconds=30)
            assert h.metric("nocpolicy_notices_pending") == 1
            h.clock.advance(10)
            assert h.metric("nocpolicy_notice_oldest_pending_seconds") == 10
            await asyncio.sleep(0.1)
            assert row()["attempts"] == 1                    # not due yet
            h.clock.advance(25)                              # second attempt fails again: back off 60 s
            await until(lambda: row()["attempts"] == 2, what="second attempt")
            assert dt.datetime.fromisoformat(row()["next_attempt"]) == T0 + dt.timedelta(seconds=35 + 60)
            sink.tempfail.clear()
            h.clock.advance(60)
            await until(lambda: row()["state"] == "sent", what="delivery after retries")
            assert row()["attempts"] == 3 and h.metric("nocpolicy_notices_pending") == 0
            assert h.metric("nocpolicy_notices_total", kind="notice", result="retry") == 2
            # the archive took a copy on the first attempt; retries go to the customer only
            assert [(m["id"], m["rcpt"]) for m in sink.messages] == [(r["message_id"], [ARCHIVE]),
                                                                     (r["message_id"], ["noc@sakura-design.example"])]
        finally:
            await h.stop()


async def test_smtp_down_keeps_notices_and_delivers_later(tmp_path):
    port = free_port()
    h = await Harness(tmp_path, port).start()
    try:
        await h.cmd("maintenance.add", **window("mw-3", "2026-01-20T01:00", "2026-01-20T05:00"))
        await until(lambda: h.store.one("SELECT MIN(attempts) a FROM mw_outbox")["a"] == 1, what="attempt")
        assert h.store.one("SELECT COUNT(*) n FROM mw_outbox WHERE state='pending'")["n"] == 2
        sink = SmtpSink()
        sink.port = port
        sink.controller = Controller(sink, hostname="127.0.0.1", port=port)
        with sink:
            h.clock.advance(31)
            await until(lambda: len(sink.messages) == 2, what="delivery once SMTP is back")
    finally:
        await h.stop()


async def test_icalendar_attachment_parses_back_with_bcop_fields(tmp_path):
    with SmtpSink() as sink:
        h = await Harness(tmp_path, sink.port).start()
        try:
            await h.cmd("maintenance.add", **window("mw-ics", "2026-01-20T01:00", "2026-01-20T05:00",
                                                    scope={"customers": ["c1001"]}, impact="degraded"))
            await until(lambda: len(sink.messages) == 1)
            msg = sink.messages[0]["msg"]
            assert msg["Message-ID"] == "<mw-ics.notice.0.c1001@isp.example>"
            text = msg.get_body(preferencelist=("plain",)).get_content()
            assert "コアルータのソフトウェア更新" in text and "2026-01-20 01:00 JST - 2026-01-20 05:00 JST" in text
            assert "core router software upgrade" not in text          # c1001's contact language is ja
            ics = next(p for p in msg.iter_attachments() if p.get_content_type() == "text/calendar")
            cal = icalendar.Calendar.from_ical(ics.get_payload(decode=True))
            ev = cal.walk("VEVENT")[0]
            assert str(ev["UID"]) == "mw-ics@isp.example" and int(ev["SEQUENCE"]) == 0
            assert ev.decoded("DTSTART") == dt.datetime(2026, 1, 19, 16, 0, tzinfo=dt.UTC)
            assert ev.decoded("DTEND") == dt.datetime(2026, 1, 19, 20, 0, tzinfo=dt.UTC)
            assert str(ev["X-MAINTNOTE-PROVIDER"]) == "Example Net KK / NOC"
            assert str(ev["X-MAINTNOTE-ACCOUNT"]) == "c1001"
            assert str(ev["X-MAINTNOTE-MAINTENANCE-ID"]) == "mw-ics"
            objs = ev["X-MAINTNOTE-OBJECT-ID"]
            assert [str(o) for o in (objs if isinstance(objs, list) else [objs])] == ["192.0.2.0/26",
                                                                                     "2001:db8:1001::/48"]
            assert str(ev["X-MAINTNOTE-IMPACT"]) == "DEGRADED"
            assert str(ev["X-MAINTNOTE-STATUS"]) == "CONFIRMED"
        finally:
            await h.stop()


def test_classify_and_password_file(tmp_path):
    rcpts = ["a@x.example", ARCHIVE]
    assert classify("a@x.example", rcpts, {}).ok
    o = classify("a@x.example", rcpts, {"a@x.example": (550, "no")})
    assert not o.ok and not o.temporary and o.recipients[ARCHIVE] == "250 accepted"
    assert classify("a@x.example", rcpts, {"a@x.example": (452, "full")}).temporary
    assert classify("a@x.example", rcpts, {ARCHIVE: (550, "no")}).ok      # only the archive copy refused
    assert classify("a@x.example", rcpts, {}, ConnectionRefusedError("refused")).temporary
    from nocpolicy.maintenance.smtp import read_password
    p = tmp_path / "smtp.pw"
    p.write_text("s3cret\n")
    os.chmod(p, 0o644)
    with pytest.raises(NocpolicyError, match="chmod 600"):
        read_password(str(p))
    os.chmod(p, 0o600)
    assert read_password(str(p)) == "s3cret"


async def test_bad_command_arguments_are_named(tmp_path):
    h = await Harness(tmp_path, None).start()
    try:
        with pytest.raises(CommandError) as e:
            await h.cmd("maintenance.add", kind="repair", start="tomorrow", end="2026-01-20T05:00",
                        reason={"ja": "x", "en": "y"}, scope={"tags": ["tokyo-east"]})
        assert "kind" in str(e.value) and "start" in str(e.value) and e.value.status == 400
        with pytest.raises(CommandError, match="matches no customer"):
            await h.cmd("maintenance.add", **window("mw-x", "2026-01-20T01:00", "2026-01-20T05:00",
                                                    scope={"tags": ["nowhere"]}))
        with pytest.raises(CommandError) as e:
            await h.cmd("contact.set", customer="c9999", email="a@b.example")
        assert e.value.status == 404
        # no SMTP: the notice waits in the outbox and is listed
        await h.cmd("maintenance.add", **window("mw-y", "2026-01-20T01:00", "2026-01-20T05:00"))
        out = await h.cmd("notices")
        assert out["smtp"] is False and out["summary"] == {"pending": 2}
        assert json.dumps(out, ensure_ascii=False)
    finally:
        await h.stop()
