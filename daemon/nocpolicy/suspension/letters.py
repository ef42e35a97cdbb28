"""Notices to a customer about a suspension (Art. 25), its termination (Art. 27(2)) and the
abolition of a service (Art. 26): the text (pure) and the letters' tables.

A letter is a row in ``sp_notice`` written in the same transaction as the change it
announces, with a deterministic Message-ID; delivery.py sends it to every channel of the
customer's fault contact.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from zoneinfo import ZoneInfo

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
    # 2: letters to every channel of the fault contact (webhook, MQTT) and the contact version
    """
    ALTER TABLE sp_notice ADD COLUMN contact_version INTEGER;
    CREATE TABLE sp_hook (
        notice_id     INTEGER PRIMARY KEY REFERENCES sp_notice(id),
        url           TEXT NOT NULL,
        state         TEXT NOT NULL,              -- pending | sent | failed
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        last_error    TEXT NOT NULL DEFAULT '',
        status        INTEGER,
        sent_at       TEXT
    );
    CREATE INDEX sp_hook_due ON sp_hook(state, next_attempt);
    CREATE TABLE sp_mqtt (
        notice_id     INTEGER PRIMARY KEY REFERENCES sp_notice(id),
        topic         TEXT NOT NULL,
        state         TEXT NOT NULL,              -- pending | delivered | failed
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_attempt  TEXT NOT NULL,
        last_error    TEXT NOT NULL DEFAULT '',
        delivered_at  TEXT
    );
    CREATE INDEX sp_mqtt_due ON sp_mqtt(state, next_attempt);
    CREATE TABLE sp_contact_seen (                -- the contact version the letters of a customer last went to
        customer  TEXT PRIMARY KEY,
        version   INTEGER NOT NULL
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
    facts: dict = field(default_factory=dict, compare=False)    # for webhook and MQTT consumers

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Letter:
        return cls(**{**d, "languages": tuple(d["languages"]), "lines_ja": tuple(d["lines_ja"]),
                      "lines_en": tuple(d["lines_en"])})

    def speaking(self, langs: tuple[str, ...]) -> Letter:
        """The same letter in other language(s) (a new contact's)."""
        return replace(self, languages=langs)

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
