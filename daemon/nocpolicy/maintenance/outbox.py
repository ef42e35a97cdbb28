"""Maintenance notices: the notice rows (``mw_outbox``) and their e-mail channel.

One row per (window, customer, notice kind, sequence), UNIQUE, with a
deterministic Message-ID, written in the same transaction as the window change.
The row is also the e-mail delivery: ``EmailChannel`` is the exactly-once
channel of the shared outbox loop (``nocpolicy.notices.outbox``), which marks a
row ``sending`` (committed) just before handing it to SMTP and records the
per-recipient result right after. On start, rows left ``sending`` by a crash are
sent again with the same Message-ID (see docs/maintenance.md for why this is
exactly-once except for a crash in the instant between the server's 250 and our
commit). Webhook and MQTT rows hang off the notice row (webhooks.py, mqttnotices.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from dataclasses import asdict

from ..notices.outbox import Attempt, Outbox, Table
from .notice import NoticeData, message_id, render

log = logging.getLogger(__name__)

OPEN_STATES = ("pending", "sending")
TABLE = "mw_outbox"
# the notices of a customer in windows still open (retargeting to a new contact)
OPEN_NOTICES = ("SELECT o.id AS id FROM mw_outbox o JOIN mw_window w ON w.id=o.window_id WHERE o.customer=? "
                "AND w.state NOT IN ('completed','cancelled')")
OLDER_NOTICES = "SELECT id FROM mw_outbox WHERE window_id=? AND customer=? AND sequence<?"


def enqueue(db, data: NoticeData, contact, now: dt.datetime, notices: Outbox) -> bool:
    """Insert one notice row (False if that exact notice already exists) and a row in every other
    channel the contact has a target on."""
    recipient = contact.email if contact else None
    elsewhere = contact is not None and any(ch.target(contact) for ch in notices.channels if ch.name != "email")
    if recipient:
        state, error = "pending", ""
    elif elsewhere:    # another channel carries this notice; an e-mail row that can never be sent is no failure
        state, error = "skipped", "no e-mail fault contact; delivered through the contact's other channels"
    else:
        state, error = "failed", "no e-mail fault contact on record"
    cur = db.execute(
        "INSERT OR IGNORE INTO mw_outbox (window_id, customer, kind, sequence, message_id, contact_version,"
        " recipient, state, next_attempt, last_error, created, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (data.window_id, data.customer_id, data.notice_kind, data.sequence, data.message_id,
         contact.version if contact else None, recipient, state, now.isoformat(), error, now.isoformat(),
         _dump(data)))
    if cur.rowcount:
        # An older notice still waiting is superseded by this newer one (it says everything again).
        if data.notice_kind != "reminder":
            notices.supersede(db, OLDER_NOTICES, (data.window_id, data.customer_id, data.sequence),
                              f"superseded by {data.notice_kind}/{data.sequence}")
        notices.enqueue(db, cur.lastrowid, contact, now)
    return bool(cur.rowcount)


def new_message_id(window_id: str, customer: str, kind: str, sequence: int, sender: str) -> str:
    return message_id(window_id, customer, kind, sequence, sender)


def _dump(data: NoticeData) -> str:
    d = asdict(data)
    for k in ("start", "end", "created"):
        d[k] = d[k].isoformat()
    return json.dumps(d, ensure_ascii=False)


def load_payload(text: str) -> NoticeData:
    d = json.loads(text)
    for k in ("start", "end", "created"):
        d[k] = dt.datetime.fromisoformat(d[k])
    for k in ("objects", "recipients", "languages"):
        d[k] = tuple(d[k])
    return NoticeData(**d)


def still_to_send(row: dict, data: NoticeData) -> list[str]:
    """Recipients not yet accepted: a retry never sends a second copy to an address that took one."""
    done = json.loads(row["result"]) if row.get("result") else {}
    return [r for r in data.recipients if not str(done.get(r, "")).startswith("250")]


def listing(db, *, state: str | None = None, window: str | None = None, limit: int = 200) -> list[dict]:
    sql = ("SELECT o.*, h.url AS webhook, h.state AS webhook_state, h.last_error AS webhook_error, "
           "m.topic AS mqtt_topic, m.state AS mqtt_state, m.attempts AS mqtt_attempts, m.last_error AS mqtt_error "
           "FROM mw_outbox o LEFT JOIN mw_hook h ON h.notice_id=o.id LEFT JOIN mw_mqtt m ON m.notice_id=o.id "
           "WHERE 1=1")
    params: list = []
    if state:
        sql += " AND o.state=?"
        params.append(state)
    if window:
        sql += " AND o.window_id=?"
        params.append(window)
    sql += " ORDER BY o.id DESC LIMIT ?"
    params.append(limit)
    out = []
    for r in db.execute(sql, params).fetchall():
        d = dict(r)
        d.pop("payload", None)
        d["result"] = json.loads(d["result"]) if d["result"] else None
        out.append(d)
    return out


def counts(db) -> dict[tuple[str, str], int]:
    return {(r["kind"], r["state"]): r["n"] for r in
            db.execute("SELECT kind, state, COUNT(*) AS n FROM mw_outbox GROUP BY kind, state").fetchall()}


def oldest_pending(db) -> dt.datetime | None:
    r = db.execute("SELECT MIN(created) AS t FROM mw_outbox WHERE state IN ('pending','sending')").fetchone()
    return dt.datetime.fromisoformat(r["t"]) if r and r["t"] else None


class EmailChannel:
    """E-mail through SMTP (exactly-once); ``mailer()`` is the configured Mailer or None (rows wait)."""

    name = "email"
    exactly_once = True
    table = Table(TABLE, "id", "recipient", "sent", "sent_at", "SELECT mw_outbox.* FROM mw_outbox WHERE")

    def __init__(self, mailer):
        self.mailer = mailer

    def ready(self) -> bool:
        return self.mailer() is not None

    def target(self, contact) -> str | None:
        return contact.email

    def add(self, db, notice_id: int, target: str, now: dt.datetime) -> bool:
        return False                        # the notice row is the e-mail row

    def retarget(self, db, notices_sql: str, undelivered_sql: str, params: tuple, target: str, contact,
                 now: dt.datetime) -> int:
        """Notices not yet delivered go to the new address (recorded contact version)."""
        rows = db.execute(f"SELECT id, payload, recipient FROM mw_outbox WHERE state IN ('pending','failed') "
                          f"AND id IN ({notices_sql})", params).fetchall()
        for r in rows:
            d = json.loads(r["payload"])
            d["recipients"] = [target] + [x for x in d["recipients"] if x != r["recipient"]]
            db.execute("UPDATE mw_outbox SET recipient=?, contact_version=?, state='pending', attempts=0, "
                       "next_attempt=?, last_error='', payload=? WHERE id=?",
                       (target, contact.version, now.isoformat(), json.dumps(d, ensure_ascii=False), r["id"]))
        return len(rows)

    @contextlib.asynccontextmanager
    async def session(self):
        async with self.mailer().session() as smtp:
            async def deliver(row: dict) -> Attempt:
                data = load_payload(row["payload"])
                outcome = await smtp.send(render(data), still_to_send(row, data))
                merged = {**(json.loads(row["result"]) if row.get("result") else {}), **outcome.recipients}
                return Attempt(outcome.ok, outcome.temporary, outcome.error,
                               {"result": json.dumps(merged, ensure_ascii=False)})
            yield deliver
