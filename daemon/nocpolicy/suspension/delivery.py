"""Delivery of suspension, termination and abolition letters to every channel of the customer's
fault contact, through the shared outbox loop class (nocpolicy.notices.outbox).

A letter is one ``sp_notice`` row (it is also its e-mail delivery row, exactly-once like a
maintenance notice) written in the same transaction as the change it announces, with a
deterministic Message-ID and the contact version it goes to. ``Outbox.enqueue`` adds a
``sp_hook`` row when the contact has a webhook (and ``maintenance.webhooks`` is on) and a
``sp_mqtt`` row when it has an ``mqtt_topic``: the maintenance ``HookChannel`` and
``MqttChannel`` classes on these tables, with the letter's own JSON document (``document``).

When a customer's fault contact changes (``contact set`` or a changed policy contact), the
letters not yet delivered go to the new contact (``retarget_changed``): the e-mail row gets
the new address, the new contact version and the text in the new contact's language, with
the same Message-ID; webhook and MQTT rows move to the new targets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from email.message import EmailMessage
from email.utils import format_datetime

from ..maintenance import contacts
from ..maintenance.mqttnotices import MqttChannel
from ..maintenance.outbox import EmailChannel
from ..maintenance.webhooks import HookChannel
from ..notices.outbox import Attempt, Outbox, Table
from .letters import Letter, languages

TABLE = "sp_notice"
SKIPPED = "no e-mail fault contact; delivered through the contact's other channels"
RETARGET_DAYS = 31        # an ended suspension's undelivered letters still follow a new contact this long
_JOINED = "SELECT {t}.*, n.payload, n.kind, n.message_id, n.customer FROM {t} JOIN sp_notice n ON n.id={t}.notice_id WHERE"
HOOK_TABLE = Table("sp_hook", "notice_id", "url", "sent", "sent_at", _JOINED.format(t="sp_hook"))
MQTT_TABLE = Table("sp_mqtt", "notice_id", "topic", "delivered", "delivered_at", _JOINED.format(t="sp_mqtt"))
# a customer's letters whose subject is still current: a suspension not ended (or ended less than
# RETARGET_DAYS ago), an abolition whose date has not passed. Params: customer, cutoff, today.
CURRENT_LETTERS = (
    "SELECT n.id AS id FROM sp_notice n "
    "LEFT JOIN sp_suspension s ON n.subject_key = 'susp-' || s.id "
    "LEFT JOIN sp_abolition a ON n.subject_key = 'abolition-' || a.id "
    "WHERE n.customer=? AND ((s.id IS NOT NULL AND (s.ended_at IS NULL OR s.ended_at >= ?)) "
    "OR (a.id IS NOT NULL AND a.effective >= ?))")


def enqueue(db, letter: Letter, contact, sender: str, now: dt.datetime, outbox: Outbox) -> int | None:
    """One ``sp_notice`` row and a row on every other channel the contact has (None: that letter exists)."""
    recipient = contact.email if contact else None
    elsewhere = contact is not None and any(ch.target(contact) for ch in outbox.channels if ch.name != "email")
    if recipient:
        state, error = "pending", ""
    elif elsewhere:    # as maintenance notices: an e-mail row that can never be sent is no failure
        state, error = "skipped", SKIPPED
    else:
        state, error = "failed", "no e-mail fault contact on record"
    cur = db.execute("INSERT OR IGNORE INTO sp_notice (subject_key, customer, kind, message_id, recipient, state,"
                     " next_attempt, last_error, payload, created, contact_version) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (letter.subject_key, letter.customer, letter.kind, letter.message_id(sender), recipient,
                      state, now.isoformat(), error, _payload(letter, recipient, now), now.isoformat(),
                      getattr(contact, "version", None)))
    if not cur.rowcount:
        return None
    if contact is not None:
        outbox.enqueue(db, cur.lastrowid, contact, now)
    _seen(db, letter.customer, getattr(contact, "version", 0) or 0)
    return int(cur.lastrowid)


def _payload(letter: Letter, recipient: str | None, now: dt.datetime) -> str:
    return json.dumps({"subject": letter.subject(), "body": letter.body(), "date": now.isoformat(),
                       "to": recipient, "letter": letter.as_dict()}, ensure_ascii=False)


def _seen(db, customer: str, version: int) -> None:
    """The contact version this customer's letters were addressed to, set on the first letter and
    raised only by retarget_changed (a letter queued between a contact change and its retargeting
    must not hide the older letters from it)."""
    db.execute("INSERT OR IGNORE INTO sp_contact_seen (customer, version) VALUES (?,?)", (customer, version))


def retarget_changed(db, outbox: Outbox, now: dt.datetime) -> dict[str, dict[str, int]]:
    """Customers whose fault contact has a newer version than their letters were addressed to:
    their current undelivered letters go to it. Returns {customer: {channel: rows moved}}."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='mw_contact'").fetchone() is None:
        return {}
    stale = db.execute("SELECT s.customer FROM sp_contact_seen s JOIN mw_contact c ON c.customer=s.customer "
                       "GROUP BY s.customer HAVING MAX(c.version) > MAX(s.version)").fetchall()
    cutoff = (now - dt.timedelta(days=RETARGET_DAYS)).isoformat()
    moved = {}
    for r in stale:
        contact = contacts.current(db, r["customer"])
        params = (r["customer"], cutoff, now.date().isoformat())
        moved[r["customer"]] = outbox.retarget(db, CURRENT_LETTERS, params, contact, now)
        if not contact.email and any(moved[r["customer"]].values()):    # another channel carries them now
            db.execute("UPDATE sp_notice SET state='skipped', last_error=?, contact_version=? WHERE state='failed' "
                       f"AND recipient IS NULL AND id IN ({CURRENT_LETTERS})", (SKIPPED, contact.version, *params))
        db.execute("UPDATE sp_contact_seen SET version=? WHERE customer=?", (contact.version, r["customer"]))
    return moved


def listing(db, customer: str, limit: int = 100) -> list[dict]:
    """A customer's letters, newest first, with the state of each channel (for ``suspensions --customer``)."""
    out = []
    for r in db.execute("SELECT n.id, n.kind, n.subject_key, n.message_id, n.contact_version, n.recipient, n.state, "
                        "n.attempts, n.last_error, n.created, n.sent_at, h.url, h.state AS hook_state, "
                        "h.last_error AS hook_error, m.topic, m.state AS mqtt_state, m.last_error AS mqtt_error "
                        "FROM sp_notice n LEFT JOIN sp_hook h ON h.notice_id=n.id LEFT JOIN sp_mqtt m "
                        "ON m.notice_id=n.id WHERE n.customer=? ORDER BY n.id DESC LIMIT ?",
                        (customer, limit)).fetchall():
        d = dict(r)
        out.append({"id": d["id"], "kind": d["kind"], "reference": d["subject_key"], "message_id": d["message_id"],
                    "contact_version": d["contact_version"], "created": d["created"], "sent_at": d["sent_at"],
                    "email": {"to": d["recipient"], "state": d["state"], "attempts": d["attempts"],
                              "error": d["last_error"]},
                    "webhook": {"url": d["url"], "state": d["hook_state"], "error": d["hook_error"]}
                    if d["url"] else None,
                    "mqtt": {"topic": d["topic"], "state": d["mqtt_state"], "error": d["mqtt_error"]}
                    if d["topic"] else None})
    return out


def document(row: dict) -> dict:
    """What a webhook receives and an MQTT topic gets (pure): the letter's facts and its text."""
    p = json.loads(row["payload"])
    letter = p.get("letter") or {}
    return {"message_id": row["message_id"], "provider": letter.get("provider"), "account": row["customer"],
            "letter": row["kind"], "reference": letter.get("subject_key"), "languages": letter.get("languages"),
            "subject": p["subject"], "text": p["body"], "facts": letter.get("facts", {}), "sent": p["date"]}


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


class LetterChannel(EmailChannel):
    """E-mail of ``sp_notice`` rows (exactly-once), through the SMTP settings ``mailer()`` returns:
    maintenance's e-mail channel (the letter row is the e-mail row) over another table, with the
    letter's own text, retargeting and archive copy."""

    table = Table(TABLE, "id", "recipient", "sent", "sent_at", "SELECT sp_notice.* FROM sp_notice WHERE")

    def retarget(self, db, notices_sql, undelivered_sql, params, target, contact, now) -> int:
        """Letters not yet sent go to the new address and contact version, in the contact's language."""
        rows = db.execute(f"SELECT id, payload FROM sp_notice WHERE state IN ('pending','failed') "
                          f"AND id IN ({notices_sql})", params).fetchall()
        for r in rows:
            p = json.loads(r["payload"])
            if p.get("letter"):
                letter = Letter.from_dict(p["letter"]).speaking(languages(contact.language))
                p.update(subject=letter.subject(), body=letter.body(), letter=letter.as_dict())
            p["to"] = target
            db.execute("UPDATE sp_notice SET recipient=?, contact_version=?, state='pending', attempts=0, "
                       "next_attempt=?, last_error='', payload=? WHERE id=?",
                       (target, contact.version, now.isoformat(), json.dumps(p, ensure_ascii=False), r["id"]))
        return len(rows)

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


def channels(mailer, webhooks_enabled) -> tuple:
    """E-mail, webhook and MQTT channels of the letters (the last is handed the MQTT publisher)."""
    return (LetterChannel(mailer), HookChannel(webhooks_enabled, table=HOOK_TABLE, body=document),
            MqttChannel(table=MQTT_TABLE, body=document))
