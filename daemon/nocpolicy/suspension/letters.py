"""Notices to a customer about a suspension (Art. 25), its termination (Art. 27(2)) and the
abolition of a service (Art. 26): the text (pure) and their e-mail channel.

A letter is a row in ``sp_notice`` written in the same transaction as the change it
announces, with a deterministic Message-ID. ``LetterChannel`` is an exactly-once e-mail
channel of the shared outbox loop (nocpolicy.notices.outbox, run by the maintenance
component with its SMTP settings): the same due times, attempts, backoff and crash
recovery as maintenance notices.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

from ..notices.outbox import Attempt, Table

MIGRATIONS = (
    """
    CREATE TABLE sp_notice (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        subject_key   TEXT NOT NULL,              -- susp-<id> | abolition-<id>
        customer      TEXT NOT NULL,
        kind          TEXT NOT NULL,              -- notice | started | ended | terminated | abolition
        message_id    TEXT NOT NULL UNIQUE,
        recipient     TEXT,
        state         TEXT NOT NULL,              -- pending | sending | sent | failed
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        last_error    TEXT NOT NULL DEFAULT '',
        result        TEXT,
        payload       TEXT NOT NULL,              -- JSON {from, to, subject, body, date}
        created       TEXT NOT NULL,
        sent_at       TEXT,
        UNIQUE (subject_key, customer, kind)
    );
    CREATE INDEX sp_notice_due ON sp_notice(state, next_attempt);
    CREATE TABLE sp_abolition (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        scope      TEXT NOT NULL,                 -- JSON {customers, plans, tags}
        effective  TEXT NOT NULL,                 -- local date the service ends
        reason     TEXT NOT NULL,
        customers  INTEGER NOT NULL,
        deadline   TEXT NOT NULL,                 -- JSON of the notice check
        created    TEXT NOT NULL,
        actor      TEXT NOT NULL
    );
    """,
)

CAUSE_TEXT = {
    "nonpayment": ("料金の不払い(第25条)", "non-payment of charges (Art. 25)"),
    "obligations": ("契約者の義務違反(第25条)", "breach of the customer's obligations (Art. 25)"),
    "prohibited-use": ("禁止された利用(第25条)", "prohibited use (Art. 25)"),
    "wholesale": ("卸電気通信役務の提供停止(第25条)", "the wholesale provider stopped its service (Art. 25)"),
}
MODE_TEXT = {
    "walled-garden": ("ウェブ閲覧を案内ページに限定(支払・サポートサイトは利用可)",
                      "web access limited to a notice page (payment and support sites stay reachable)"),
    "throttle": ("通信速度の制限", "speed restricted"),
    "block": ("通信の停止(案内ページを除く)", "service stopped (except the notice page)"),
}
RESOLVE_TEXT = {
    "nonpayment": ("未払いの料金をお支払いください。確認後、速やかに再開します。",
                   "Please pay the outstanding charges; service resumes once the payment is confirmed."),
    "obligations": ("契約上の義務の履行についてサポートまでご連絡ください。",
                    "Please contact support to resolve the breach of your obligations."),
    "prohibited-use": ("該当する利用を停止し、サポートまでご連絡ください。",
                       "Please stop the prohibited use and contact support."),
    "wholesale": ("卸元の役務再開をお待ちください。再開次第お知らせします。",
                  "Please wait for the wholesale service to resume; we will let you know."),
}
SUBJECT = {
    "notice": ("【ご利用の停止・制限のお知らせ】", "Notice of suspension or restriction"),
    "started": ("【ご利用の停止・制限を開始しました】", "Suspension or restriction started"),
    "ended": ("【ご利用を再開しました】", "Service resumed"),
    "cancelled": ("【ご利用の停止・制限の取消し】", "Suspension cancelled"),
    "terminated": ("【ご契約の解除のお知らせ】", "Notice of termination of your contract"),
    "abolition": ("【サービス廃止のお知らせ】", "Notice of abolition of a service"),
}


@dataclass(frozen=True)
class Letter:
    subject_key: str
    customer: str
    customer_name: str
    kind: str
    languages: tuple[str, ...]
    lines_ja: tuple[str, ...]
    lines_en: tuple[str, ...]
    provider: str

    def message_id(self, sender: str) -> str:
        return f"<{self.subject_key}.{self.kind}.{self.customer}@{sender.rpartition('@')[2] or 'localhost'}>"

    def subject(self) -> str:
        ja, en = SUBJECT[self.kind]
        parts = ([ja] if "ja" in self.languages else []) + ([f"[{en}]"] if "en" in self.languages else [])
        return f"{' '.join(parts)} {self.subject_key}"

    def body(self) -> str:
        out: list[str] = []
        if "ja" in self.languages:
            out += [f"{self.customer_name} 様 (お客様番号 {self.customer})", "", *self.lines_ja, "", self.provider, ""]
        if "en" in self.languages:
            if out:
                out += ["-" * 60, ""]
            out += [f"Dear {self.customer_name} (account {self.customer}),", "", *self.lines_en, "",
                    self.provider, ""]
        return "\n".join(out)


def languages(contact_language: str | None) -> tuple[str, ...]:
    """The contact's language(s): ``ja``, ``en`` or ``ja+en`` (the default)."""
    if contact_language in ("ja", "en"):
        return (contact_language,)
    return ("ja", "en")


def local(t: str | dt.datetime | None, tz: str) -> str:
    if t is None:
        return "再開まで / until resumed"
    when = dt.datetime.fromisoformat(t) if isinstance(t, str) else t
    return when.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def suspension_lines(kind: str, row: dict, settings, tz: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The Japanese and English lines of a suspension notice (pure)."""
    cja, cen = CAUSE_TEXT[row["cause"]]
    mja, men = MODE_TEXT[row["mode"]]
    rja, ren = RESOLVE_TEXT[row["cause"]]
    period = f"{local(row['start'], tz)} - {local(row['end'], tz) if row['end'] else ''}".rstrip(" -")
    period_en = period if row["end"] else f"from {local(row['start'], tz)} until resumed"
    period_ja = period if row["end"] else f"{local(row['start'], tz)} から再開まで"
    lead = {"notice": ("下記のとおり、ご利用を停止又は制限いたします。", "We will suspend or restrict your service as below."),
            "started": ("下記の停止又は制限を開始しました。", "The suspension or restriction below has started."),
            "ended": ("下記の停止又は制限を終了し、ご利用を再開しました。", "The suspension below has ended; your service is "
                      "resumed."),
            "cancelled": ("先にお知らせした下記の停止又は制限は取り消しました。", "The suspension announced below is "
                          "cancelled; your service continues."),
            "terminated": ("下記の停止の原因が解消されないため、利用契約を解除いたします(第27条第2項)。",
                           "As the cause of the suspension below was not removed, we terminate your contract "
                           "(Art. 27(2)).")}[kind]
    ja = [lead[0], "", f"  事由: {cja}", f"  理由: {row['reason']}", f"  期間: {period_ja}", f"  内容: {mja}",
          f"  解決方法: {rja}", f"  お問い合わせ: {settings.contact_ja}"]
    en = [lead[1], "", f"  Cause: {cen}", f"  Reason: {row['reason']}", f"  Period: {period_en}",
          f"  Restriction: {men}", f"  How to resolve: {ren}", f"  Contact: {settings.contact_en}"]
    if row.get("urgent") and kind == "notice":
        ja.append(f"  緊急やむを得ない事由により事前の通知ができませんでした: {row['justification']}")
        en.append(f"  This notice could not be given beforehand because the matter is urgent: {row['justification']}")
    return tuple(ja), tuple(en)


def abolition_lines(service: str, effective: dt.date, reason: str, settings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    day = effective.isoformat()
    ja = ["下記のサービスを廃止いたします(第26条)。", "", f"  サービス: {service}", f"  廃止日: {day}",
          f"  理由: {reason}", f"  お問い合わせ: {settings.contact_ja}"]
    en = ["We will abolish the service below (Art. 26).", "", f"  Service: {service}", f"  Abolished on: {day}",
          f"  Reason: {reason}", f"  Contact: {settings.contact_en}"]
    return tuple(ja), tuple(en)


def enqueue(db, letter: Letter, recipient: str | None, sender: str, now: dt.datetime) -> int | None:
    """One ``sp_notice`` row (None when that exact letter exists already)."""
    payload = {"subject": letter.subject(), "body": letter.body(), "date": now.isoformat(), "to": recipient}
    state, error = ("pending", "") if recipient else ("failed", "no e-mail fault contact on record")
    cur = db.execute("INSERT OR IGNORE INTO sp_notice (subject_key, customer, kind, message_id, recipient, state,"
                     " next_attempt, last_error, payload, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (letter.subject_key, letter.customer, letter.kind, letter.message_id(sender), recipient,
                      state, now.isoformat(), error, json.dumps(payload, ensure_ascii=False), now.isoformat()))
    return int(cur.lastrowid) if cur.rowcount else None


def render(row: dict, sender: str) -> EmailMessage:
    p = json.loads(row["payload"])
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = row["recipient"]
    msg["Subject"] = p["subject"]
    msg["Date"] = format_datetime(dt.datetime.fromisoformat(p["date"]).astimezone(dt.UTC))
    msg["Message-ID"] = row["message_id"]
    msg["X-Nocpolicy-Suspension"] = f"{row['subject_key']}/{row['kind']}"
    msg.set_content(p["body"], charset="utf-8")
    return msg


class LetterChannel:
    """E-mail of ``sp_notice`` rows (exactly-once), through the SMTP settings ``mailer()`` returns."""

    name = "letters"
    exactly_once = True
    table = Table("sp_notice", "id", "recipient", "sent", "sent_at", "SELECT sp_notice.* FROM sp_notice WHERE")

    def __init__(self, mailer):
        self.mailer = mailer

    def ready(self) -> bool:
        return self.mailer() is not None

    def target(self, contact) -> str | None:
        return None                      # rows are written by enqueue(), not by Outbox.enqueue

    def add(self, db, notice_id: int, target: str, now: dt.datetime) -> bool:
        return False

    def retarget(self, db, notices_sql, undelivered_sql, params, target, contact, now) -> int:
        return 0

    @contextlib.asynccontextmanager
    async def session(self):
        mailer = self.mailer()
        copy_to = list(mailer.cfg.copy_to)
        async with mailer.session() as smtp:
            async def deliver(row: dict) -> Attempt:
                outcome = await smtp.send(render(row, mailer.cfg.sender), [row["recipient"], *copy_to])
                return Attempt(outcome.ok, outcome.temporary, outcome.error,
                               {"result": json.dumps(outcome.recipients, ensure_ascii=False)})
            yield deliver
