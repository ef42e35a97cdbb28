"""Window lifecycle with a manual clock: notice, update, reminder, start, end, cancel; impact records,
metrics and control-plane events; notices delivered through a real SMTP server."""

from __future__ import annotations

import datetime as dt

import icalendar
import pytest

from nocpolicy.errors import CommandError
from nocpolicy.maintenance.lifecycle import TRANSITIONS, TransitionRefused, due_event, next_state
from nocpolicy.maintenance.lifecycle import Timing as LTiming
from test_maintenance_smtp import Harness, SmtpSink, until, window


def vevent(msg):
    part = next(p for p in msg.iter_attachments() if p.get_content_type() == "text/calendar")
    return icalendar.Calendar.from_ical(part.get_payload(decode=True)).walk("VEVENT")[0]


async def drained(h):
    await until(lambda: h.metric("nocpolicy_notices_pending") == 0, what="outbox drained")


def test_transition_table():
    assert next_state("scheduled", "notify") == "notified"
    assert next_state("notified", "start") == "active"
    assert next_state("active", "end") == "completed"
    assert next_state("active", "cancel") == "completed"
    for final in ("completed", "cancelled"):
        assert not [k for k in TRANSITIONS if k[0] == final]
        with pytest.raises(TransitionRefused):
            next_state(final, "start")
    s, e = dt.datetime(2026, 1, 20, tzinfo=dt.UTC), dt.datetime(2026, 1, 20, 4, tzinfo=dt.UTC)
    day = dt.timedelta(days=1)
    assert due_event(LTiming("notified", s, e, False), s - 2 * day, 86400) is None
    assert due_event(LTiming("notified", s, e, False), s - day, 86400) == "remind"
    assert due_event(LTiming("notified", s, e, True), s - day, 86400) is None
    assert due_event(LTiming("notified", s, e, False), s, 86400) == "start"
    assert due_event(LTiming("active", s, e, True), e, 86400) == "end"


async def test_full_lifecycle_with_notices(tmp_path):
    with SmtpSink() as sink:
        h = await Harness(tmp_path, sink.port).start()
        try:
            out = await h.cmd("maintenance.add", **window("mw-a", "2026-01-20T01:00", "2026-01-20T05:00"))
            w = out["window"]
            assert w["state"] == "notified" and w["sequence"] == 0
            assert w["deadline"]["deadline"]["last_day"] == "2026-01-05"
            assert h.metric("nocpolicy_maintenance_windows", kind="planned", state="notified") == 1
            await until(lambda: len(sink.messages) == 2, what="notices")   # 2 customers (+ archive copy each)

            # too late for a planned window starting 2026-01-10 (deadline 2025-12-26) ...
            with pytest.raises(CommandError) as e:
                await h.cmd("maintenance.add", **window("mw-late", "2026-01-10T01:00", "2026-01-10T02:00"))
            assert e.value.status == 409 and "2025-12-26" in str(e.value)
            with pytest.raises(CommandError, match="justification"):
                await h.cmd("maintenance.add", **window("mw-late", "2026-01-10T01:00", "2026-01-10T02:00",
                                                        urgent=True))
            # ... unless urgent with a justification: the notice goes out at once, and it overlaps nothing
            out = await h.cmd("maintenance.add", **window("mw-urgent", "2026-01-10T01:00", "2026-01-10T02:00",
                                                          urgent=True, justification="vendor security advisory",
                                                          scope={"customers": ["c1003"]}))
            assert out["window"]["urgent"] and out["overlaps"] == []
            # a fault window on an overlapping scope and period is reported
            out = await h.cmd("maintenance.add", **window("mw-fault", "2026-01-20T03:00", "2026-01-20T06:00",
                                                          kind="fault", scope={"prefixes": ["192.0.2.0/24"]}))
            assert out["overlaps"] == [{"window": "mw-a", "customers": 2, "from": "2026-01-19T18:00:00+00:00",
                                        "to": "2026-01-19T20:00:00+00:00"}]
            await until(lambda: len(sink.messages) == 2 + 1 + 2, what="urgent and fault notices")
            await h.cmd("maintenance.cancel", id="mw-fault", reason="duplicate")
            await until(lambda: len(sink.messages) == 2 + 1 + 2 + 2, what="cancellation notices")

            # reschedule outside the announced period: deadline checked again, SEQUENCE rises
            out = await h.cmd("maintenance.update", id="mw-a", start="2026-01-21T01:00", end="2026-01-21T05:00")
            assert out["window"]["sequence"] == 1 and out["notices_queued"] == 2
            await drained(h)
            # moving it to within 14 days is refused with the computed deadline
            with pytest.raises(CommandError, match="2025-12-29"):
                await h.cmd("maintenance.update", id="mw-a", start="2026-01-13T01:00", end="2026-01-13T02:00")
            # shrinking inside the announced period needs no new deadline
            h.clock.set(dt.datetime(2026, 1, 18, tzinfo=dt.UTC))
            out = await h.cmd("maintenance.update", id="mw-a", end="2026-01-21T04:00")
            assert out["window"]["sequence"] == 2
            await drained(h)

            # reminder 24 h before the start (2026-01-21 01:00 JST = 2026-01-20 16:00Z)
            start = dt.datetime(2026, 1, 20, 16, 0, tzinfo=dt.UTC)
            h.clock.set(start - dt.timedelta(hours=24))
            h.drain()
            h.comp.tick()
            assert h.comp.service.get("mw-urgent").state == "completed"      # its own period passed meanwhile
            assert h.comp.service.get("mw-a").reminded
            await drained(h)

            # start: active, customers suspended, event for the control plane
            h.clock.set(start)
            h.comp.tick()
            assert h.comp.service.get("mw-a").state == "active"
            await drained(h)
            assert h.metric("nocpolicy_suspended_customers") == 2
            evs = [e.payload for e in h.drain() if e.kind == "window"]
            assert {"id": "mw-a", "state": "active", "customers": ["c1001", "c1002"]}.items() <= evs[-1].items()
            with pytest.raises(CommandError, match="start cannot move"):
                await h.cmd("maintenance.update", id="mw-a", start="2026-01-21T02:00")

            # end: completed, impact records with durations (Art. 28(2))
            h.clock.set(start + dt.timedelta(hours=3, minutes=5))
            h.comp.tick()
            show = await h.cmd("maintenance.show", id="mw-a")
            assert show["window"]["state"] == "completed" and show["window"]["sequence"] == 4
            assert [(i["customer"], i["seconds"]) for i in show["impacts"]] == [("c1001", 3 * 3600.0),
                                                                                ("c1002", 3 * 3600.0)]
            assert h.metric("nocpolicy_suspended_customers") == 0
            assert h.metric("nocpolicy_maintenance_windows", kind="planned", state="completed") == 2   # + mw-urgent
            with pytest.raises(CommandError, match="completed"):
                await h.cmd("maintenance.cancel", id="mw-a")

            # every notice for c1001 about mw-a: same UID, SEQUENCE rising with the BCOP status
            await until(lambda: h.metric("nocpolicy_notices_pending") == 0, what="outbox drained")
            seen = [vevent(m["msg"]) for m in sink.messages
                    if m["msg"]["X-Nocpolicy-Window"] == "mw-a" and "fault@yamada.example" in m["rcpt"]]
            got = [(str(v["UID"]), int(v["SEQUENCE"]), str(v["X-MAINTNOTE-STATUS"])) for v in seen]
            uid = "mw-a@isp.example"
            # notice/0, update/1, update/2, the reminder repeats 2, then IN-PROCESS and COMPLETED
            assert got == [(uid, 0, "CONFIRMED"), (uid, 1, "CONFIRMED"), (uid, 2, "CONFIRMED"),
                           (uid, 2, "CONFIRMED"), (uid, 3, "IN-PROCESS"), (uid, 4, "COMPLETED")]
            cancelled = [vevent(m["msg"]) for m in sink.messages if m["msg"]["X-Nocpolicy-Window"] == "mw-fault"]
            assert {str(v["X-MAINTNOTE-STATUS"]) for v in cancelled} == {"CONFIRMED", "CANCELLED"}
            assert all(str(v["STATUS"]) == "CANCELLED" for v in cancelled if int(v["SEQUENCE"]) == 1)
            # every notice records the contact version it went to, and the audit trail has each step
            assert {n["contact_version"] for n in show["notices"]} == {1}
            actions = [a["action"] for a in reversed(show["audit"])]
            assert actions[:2] == ["maintenance.add", "maintenance.notify"]
            assert {"maintenance.update", "maintenance.remind", "maintenance.start", "maintenance.end"} <= set(actions)
        finally:
            await h.stop()


async def test_background_loop_moves_windows_with_the_clock(tmp_path):
    h = await Harness(tmp_path, None, start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)).start()
    try:
        await h.cmd("maintenance.add", **window("mw-f", "2026-01-01T10:00", "2026-01-01T11:00", kind="fault",
                                                scope={"nodes": ["edge-tokyo-2"]}))
        # announced less than 24 h before the start: that notice is the reminder, no second one
        assert h.comp.tick() == [] and h.comp.service.get("mw-f").reminded
        h.clock.advance(3600)                      # 10:00 JST: the loop, not the test, starts it
        await until(lambda: h.comp.service.get("mw-f").state == "active", what="automatic start")
        assert h.metric("nocpolicy_suspended_customers") == 3      # c1003, c2001, c1004 on edge-tokyo-2
        h.clock.advance(3600)
        await until(lambda: h.comp.service.get("mw-f").state == "completed", what="automatic end")
        assert h.metric("nocpolicy_suspended_customers") == 0
        # no SMTP: notices wait in the outbox; each newer one supersedes an older one still waiting
        # (it repeats everything), so each customer has the latest, COMPLETED, waiting
        rows = h.store.all("SELECT kind, state FROM mw_outbox ORDER BY id")
        assert sorted((r["kind"], r["state"]) for r in rows) == sorted(
            [("notice", "superseded")] * 3 + [("started", "superseded")] * 3 + [("completed", "pending")] * 3)
        assert h.metric("nocpolicy_notices_pending") == 3
        assert h.metric("nocpolicy_notice_oldest_pending_seconds") == 0   # the completed ones are new
    finally:
        await h.stop()


async def test_policy_windows_are_checked_synced_and_cancelled(tmp_path):
    h = Harness(tmp_path, None)
    yaml = h.dir / "maintenance.yaml"
    base = yaml.read_text()
    yaml.write_text(base + """
  windows:
    - id: pw-1
      kind: planned
      start: 2026-02-10T01:00
      end: 2026-02-10T03:00
      reason: {ja: 光ファイバ移設工事, en: fibre relocation}
      scope: {customers: [c1004]}
    - id: pw-old
      kind: planned
      start: 2025-06-01T01:00
      end: 2025-06-01T03:00
      reason: {ja: 過去の工事, en: past work}
      scope: {customers: [c1004]}
""")
    from nocpolicy.policy.diff import diff_policies
    from nocpolicy.policy.load import load_policy
    h.policy = load_policy(h.dir)
    await h.start()
    try:
        ws = h.comp.service.all()
        assert ws["pw-1"].state == "notified" and ws["pw-1"].source == "policy"
        assert ws["pw-old"].state == "completed"                   # history: no notices
        assert h.store.one("SELECT COUNT(*) n FROM mw_outbox")["n"] == 1
        # a policy window whose deadline passed is refused with file:line and the deadline
        yaml.write_text(yaml.read_text().replace("2026-02-10T01:00", "2026-01-10T01:00")
                        .replace("2026-02-10T03:00", "2026-01-10T03:00"))
        bad = load_policy(h.dir)
        with pytest.raises(Exception, match=r"maintenance.yaml:\d+.*2025-12-26"):
            await h.comp.prepare(bad, diff_policies(h.policy, bad))
        # removing it from the policy cancels it (cancellation notice queued)
        yaml.write_text(base)
        new = load_policy(h.dir)
        (await h.comp.prepare(new, diff_policies(h.policy, new)))()
        h.policy = new
        assert h.comp.service.get("pw-1").state == "cancelled"
        kinds = [r["kind"] for r in h.store.all("SELECT kind FROM mw_outbox ORDER BY id")]
        assert kinds == ["notice", "cancelled"]
    finally:
        await h.stop()
