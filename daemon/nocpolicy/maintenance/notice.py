"""Render one notice (pure): Japanese and English plain text plus a BCOP iCalendar part.

The iCalendar part follows the Maintenance Notification BCOP: one VEVENT whose
UID is the same for every notice about a window and whose SEQUENCE rises with
each change (update, start, end, cancellation); X-MAINTNOTE-* properties carry
the provider, the customer account, the window id, the affected objects, the
impact and the status (CONFIRMED, IN-PROCESS, COMPLETED, CANCELLED).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import icalendar

from .lifecycle import BCOP_STATUS


@dataclass(frozen=True)
class NoticeData:
    window_id: str
    window_kind: str          # planned | fault
    notice_kind: str          # notice | update | reminder | started | completed | cancelled
    sequence: int
    start: dt.datetime
    end: dt.datetime
    reason_ja: str
    reason_en: str
    impact: str
    scope_text: str
    customer_id: str
    customer_name: str
    objects: tuple[str, ...]
    provider: str
    sender: str
    recipients: tuple[str, ...]
    message_id: str
    created: dt.datetime       # when the notice was queued (Date:, DTSTAMP)
    tz: str = "Asia/Tokyo"
    languages: tuple[str, ...] = ("ja", "en")
    urgent: bool = False


SUBJECT = {
    "notice": ("【{what}のお知らせ】", "{what_en} notice"),
    "update": ("【{what}の日程変更】", "{what_en} rescheduled"),
    "reminder": ("【{what}のご案内(前日)】", "{what_en} reminder"),
    "started": ("【{what}開始】", "{what_en} started"),
    "completed": ("【{what}完了】", "{what_en} completed"),
    "cancelled": ("【{what}中止】", "{what_en} cancelled"),
}
WHAT = {"planned": ("メンテナンス", "Maintenance"), "fault": ("設備障害対応", "Fault repair")}
IMPACT_JA = {"NO-IMPACT": "影響なし", "REDUCED-REDUNDANCY": "冗長性の低下", "DEGRADED": "品質の低下",
             "OUTAGE": "サービス提供の中止"}
LEAD_JA = {
    "notice": "下記のとおり、サービスの提供を中止させていただきます。",
    "update": "先にお知らせした作業の日程を下記のとおり変更いたします。",
    "reminder": "下記の作業の実施が近づいておりますのでご案内いたします。",
    "started": "下記の作業を開始いたしました。",
    "completed": "下記の作業は完了いたしました。",
    "cancelled": "先にお知らせした下記の作業は中止となりました。",
}
LEAD_EN = {
    "notice": "We will suspend the service as described below.",
    "update": "The work we announced earlier has been rescheduled as below.",
    "reminder": "This is a reminder of the upcoming work below.",
    "started": "The work below has started.",
    "completed": "The work below has been completed.",
    "cancelled": "The work we announced earlier has been cancelled.",
}


def _local(t: dt.datetime, tz: str) -> str:
    return t.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def subject(n: NoticeData) -> str:
    ja, en = WHAT[n.window_kind]
    sj, se = SUBJECT[n.notice_kind]
    day = n.start.astimezone(ZoneInfo(n.tz)).strftime("%Y-%m-%d")
    parts = []
    if "ja" in n.languages:
        parts.append(sj.format(what=ja))
    if "en" in n.languages:
        parts.append(f"[{se.format(what_en=en)}]")
    return f"{' '.join(parts)} {n.window_id} {day}"


def body(n: NoticeData) -> str:
    period = f"{_local(n.start, n.tz)} - {_local(n.end, n.tz)}"
    objs = ", ".join(n.objects)
    out = []
    if "ja" in n.languages:
        kind = "電気通信設備の保守又は工事(第24条第1項第1号)" if n.window_kind == "planned" \
            else "電気通信設備の障害(第24条第1項第2号)"
        out += [f"{n.customer_name} 御中 (お客様番号 {n.customer_id})", "", LEAD_JA[n.notice_kind], "",
                f"  作業番号: {n.window_id}", f"  事由: {kind}", f"  理由: {n.reason_ja}",
                f"  期間: {period}", f"  対象: {objs} ({n.scope_text})",
                f"  影響: {IMPACT_JA.get(n.impact, n.impact)}"]
        if n.urgent and n.notice_kind in ("notice", "update"):
            out.append("  緊急やむを得ない事由により、通知期限を過ぎてのご連絡となりました(第24条第2項ただし書)。")
        out += ["", f"{n.provider}", ""]
    if "en" in n.languages:
        kind = "maintenance or construction of equipment (Art. 24(1)(1))" if n.window_kind == "planned" \
            else "equipment fault (Art. 24(1)(2))"
        if out:
            out += ["-" * 60, ""]
        out += [f"Dear {n.customer_name} (account {n.customer_id}),", "", LEAD_EN[n.notice_kind], "",
                f"  Maintenance id: {n.window_id}", f"  Cause: {kind}", f"  Reason: {n.reason_en}",
                f"  Period: {period}", f"  Affected: {objs} ({n.scope_text})", f"  Impact: {n.impact}"]
        if n.urgent and n.notice_kind in ("notice", "update"):
            out.append("  This notice is late because the work is urgent and unavoidable (Art. 24(2) proviso).")
        out += ["", n.provider, ""]
    return "\n".join(out)


def calendar(n: NoticeData) -> bytes:
    cal = icalendar.Calendar()
    cal.add("prodid", "-//nocpolicy//maintenance notices//EN")
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    ev = icalendar.Event()
    ev.add("uid", f"{n.window_id}@{_domain(n.sender)}")
    ev.add("sequence", n.sequence)
    ev.add("dtstamp", n.created.astimezone(dt.UTC))
    ev.add("dtstart", n.start.astimezone(dt.UTC))
    ev.add("dtend", n.end.astimezone(dt.UTC))
    ev.add("summary", f"{WHAT[n.window_kind][1]} {n.window_id}: {n.reason_en}")
    ev.add("description", n.reason_ja if "ja" in n.languages else n.reason_en)
    ev.add("organizer", f"mailto:{n.sender}")
    status = BCOP_STATUS[n.notice_kind]
    ev.add("status", "CANCELLED" if status == "CANCELLED" else "CONFIRMED")
    ev.add("x-maintnote-provider", n.provider)
    ev.add("x-maintnote-account", n.customer_id)
    ev.add("x-maintnote-maintenance-id", n.window_id)
    for obj in n.objects:
        ev.add("x-maintnote-object-id", obj)
    ev.add("x-maintnote-impact", n.impact)
    ev.add("x-maintnote-status", status)
    cal.add_component(ev)
    return cal.to_ical()


def render(n: NoticeData) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = n.sender
    msg["To"] = n.recipients[0] if n.recipients else n.sender
    msg["Subject"] = subject(n)
    msg["Date"] = format_datetime(n.created.astimezone(dt.UTC))
    msg["Message-ID"] = n.message_id
    msg["X-Nocpolicy-Window"] = n.window_id
    msg["X-Nocpolicy-Notice"] = f"{n.notice_kind}/{n.sequence}"
    msg.set_content(body(n), charset="utf-8")
    msg.add_attachment(calendar(n), maintype="text", subtype="calendar",
                       filename=f"{n.window_id}.ics", params={"method": "PUBLISH"})
    return msg


def message_id(window_id: str, customer_id: str, notice_kind: str, sequence: int, sender: str) -> str:
    """Deterministic: the same notice always has the same Message-ID (receivers can de-duplicate)."""
    return f"<{window_id}.{notice_kind}.{sequence}.{customer_id}@{_domain(sender)}>"


def _domain(sender: str) -> str:
    return sender.rpartition("@")[2] or "localhost"
