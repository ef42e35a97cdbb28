"""Transactional outbox: notices are rows written in the same transaction as the window change.

One row per (window, customer, notice kind, sequence), UNIQUE, with a
deterministic Message-ID. Delivery claims due rows, marks one ``sending``
(committed) just before handing it to SMTP, and records the per-recipient result
right after. On start, rows left ``sending`` by a crash are sent again with the
same Message-ID (see docs/maintenance.md for why this is exactly-once except for
a crash in the instant between the server's 250 and our commit).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import asdict

from ..errors import NocpolicyError
from .contacts import ContactVersion
from .notice import NoticeData, message_id, render
from .smtp import Outcome

log = logging.getLogger(__name__)

BACKOFF_BASE = 30.0        # seconds before the first retry
BACKOFF_CAP = 3600.0       # never wait longer than this between attempts
MAX_ATTEMPTS = 10          # then the notice is failed and shown to the operator
BATCH = 50
OPEN_STATES = ("pending", "sending")


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 -> 30 s, 2 -> 60 s, ... capped at 1 h)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))


def enqueue(db, data: NoticeData, contact: ContactVersion | None, now: dt.datetime, *,
            webhooks: bool = False) -> bool:
    """Insert one notice row (False if that exact notice already exists); a webhook row too if enabled,
    an MQTT row when the contact has an ``mqtt_topic``."""
    from . import mqttnotices  # here: mqttnotices builds on this module
    recipient = contact.email if contact else None
    topic = contact.mqtt_topic if contact else None
    if recipient:
        state, error = "pending", ""
    elif topic:    # the MQTT row carries this notice; an e-mail row that can never be sent is no failure
        state, error = "skipped", "no e-mail fault contact; delivered to the contact's mqtt_topic"
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
            why = f"superseded by {data.notice_kind}/{data.sequence}"
            db.execute("UPDATE mw_outbox SET state='superseded', last_error=? WHERE window_id=? AND customer=?"
                       " AND state='pending' AND sequence<? ",
                       (why, data.window_id, data.customer_id, data.sequence))
            db.execute("UPDATE mw_hook SET state='superseded', last_error=? WHERE state='pending' AND notice_id IN "
                       "(SELECT id FROM mw_outbox WHERE window_id=? AND customer=? AND sequence<?)",
                       (why, data.window_id, data.customer_id, data.sequence))
            mqttnotices.supersede(db, data.window_id, data.customer_id, data.sequence, why)
        if topic:
            mqttnotices.add(db, cur.lastrowid, topic, now)
        if webhooks and contact is not None and contact.webhook:
            db.execute("INSERT INTO mw_hook (notice_id, url, state, next_attempt) VALUES (?,?,'pending',?)",
                       (cur.lastrowid, contact.webhook, now.isoformat()))
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


def recover(db, now: dt.datetime) -> int:
    """After a restart: rows left 'sending' go back to 'pending' to be sent again (same Message-ID)."""
    cur = db.execute("UPDATE mw_outbox SET state='pending', next_attempt=?, "
                     "last_error='interrupted while sending; sending again with the same Message-ID' "
                     "WHERE state='sending'", (now.isoformat(),))
    return cur.rowcount


def due(db, now: dt.datetime, limit: int = BATCH) -> list[dict]:
    return [dict(r) for r in db.execute(
        "SELECT * FROM mw_outbox WHERE state='pending' AND next_attempt<=? ORDER BY id LIMIT ?",
        (now.isoformat(), limit)).fetchall()]


def next_due(db) -> dt.datetime | None:
    r = db.execute("SELECT MIN(next_attempt) AS t FROM mw_outbox WHERE state='pending'").fetchone()
    return dt.datetime.fromisoformat(r["t"]) if r and r["t"] else None


def mark_sending(db, row_id: int, now: dt.datetime) -> bool:
    """Claim one pending row (False if someone else claimed it or it was superseded meanwhile)."""
    cur = db.execute("UPDATE mw_outbox SET state='sending', attempts=attempts+1, next_attempt=? "
                     "WHERE id=? AND state='pending'", (now.isoformat(), row_id))
    return cur.rowcount == 1


def record(db, row: dict, outcome: Outcome, now: dt.datetime) -> str:
    """Store the result of one attempt; returns the new state."""
    attempts = row["attempts"] + 1
    merged = {**(json.loads(row["result"]) if row.get("result") else {}), **outcome.recipients}
    result = json.dumps(merged, ensure_ascii=False)
    if outcome.ok:
        db.execute("UPDATE mw_outbox SET state='sent', sent_at=?, result=?, last_error='', attempts=? "
                   "WHERE id=?", (now.isoformat(), result, attempts, row["id"]))
        return "sent"
    if outcome.temporary and attempts < MAX_ATTEMPTS:
        nxt = now + dt.timedelta(seconds=backoff(attempts))
        db.execute("UPDATE mw_outbox SET state='pending', next_attempt=?, result=?, last_error=?, attempts=? "
                   "WHERE id=?", (nxt.isoformat(), result, outcome.error, attempts, row["id"]))
        return "retry"
    db.execute("UPDATE mw_outbox SET state='failed', result=?, last_error=?, attempts=? WHERE id=?",
               (result, outcome.error, attempts, row["id"]))
    return "failed"


def retarget(db, customer: str, contact: ContactVersion, now: dt.datetime) -> int:
    """A new fault contact: notices not yet delivered to this customer go to it (recorded version)."""
    if not contact.email:
        return 0
    rows = db.execute("SELECT o.id, o.payload, o.recipient FROM mw_outbox o JOIN mw_window w ON w.id=o.window_id "
                      "WHERE o.customer=? AND o.state IN ('pending','failed') "
                      "AND w.state NOT IN ('completed','cancelled')", (customer,)).fetchall()
    for r in rows:
        d = json.loads(r["payload"])
        d["recipients"] = [contact.email] + [x for x in d["recipients"] if x != r["recipient"]]
        db.execute("UPDATE mw_outbox SET recipient=?, contact_version=?, state='pending', attempts=0, "
                   "next_attempt=?, last_error='', payload=? WHERE id=?",
                   (contact.email, contact.version, now.isoformat(), json.dumps(d, ensure_ascii=False), r["id"]))
    return len(rows)


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


class Delivery:
    """Sends due notices through a mailer; ``store`` and ``clock`` are passed in."""

    def __init__(self, store, clock, on_result=None):
        self.store, self.clock = store, clock
        self.on_result = on_result or (lambda row, state: None)

    async def run_once(self, mailer) -> int:
        """Deliver every due notice once; returns how many were attempted."""
        with self.store.transaction() as db:
            rows = due(db, self.clock.now())
        if not rows:
            return 0
        try:
            async with mailer.session() as session:
                for row in rows:
                    with self.store.transaction() as db:   # re-read: a contact change may have retargeted it
                        fresh = db.execute("SELECT * FROM mw_outbox WHERE id=?", (row["id"],)).fetchone()
                        if fresh is None or not mark_sending(db, row["id"], self.clock.now()):
                            continue
                    row = dict(fresh)
                    data = load_payload(row["payload"])
                    outcome = await session.send(render(data), still_to_send(row, data))
                    with self.store.transaction() as db:
                        state = record(db, row, outcome, self.clock.now())
                    if state != "sent":
                        log.warning("notice %s to customer %s: %s (%s)", row["message_id"], row["customer"],
                                    state, outcome.error)
                    self.on_result(row, state)
        except NocpolicyError as exc:
            log.warning("notice delivery: %s; will retry", exc)
            outcome = Outcome(False, True, str(exc))
            with self.store.transaction() as db:
                for row in rows:
                    cur = db.execute("SELECT state, attempts FROM mw_outbox WHERE id=?", (row["id"],)).fetchone()
                    if cur["state"] == "pending":
                        self.on_result(row, record(db, dict(row, attempts=cur["attempts"]), outcome,
                                                   self.clock.now()))
        return len(rows)
