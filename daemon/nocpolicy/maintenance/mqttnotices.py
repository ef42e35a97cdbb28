"""MQTT delivery of notices (the fault contact's optional ``mqtt_topic``) through the MqttBridge.

Each notice row for a contact with an ``mqtt_topic`` gets one ``mw_mqtt`` row.
Delivery publishes the same JSON document as the webhook body (with
``message_id`` and the iCalendar text) with QoS 1, not retained, to the topic;
the row is ``delivered`` once the broker acknowledged it (PUBACK). Without
``--mqtt``, or while the bridge is not connected, the attempt counts and the row
stays ``pending`` with the outbox backoff (``failed`` after MAX_ATTEMPTS); when
the bridge (re)connects, waiting rows are tried at once. At-least-once: a crash
or a lost PUBACK repeats the publish with the same ``message_id``, which
consumers use to de-duplicate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from .contacts import ContactVersion
from .outbox import MAX_ATTEMPTS, backoff, load_payload
from .webhooks import payload

log = logging.getLogger(__name__)

RESULTS = ("delivered", "retry", "failed")


def body(data) -> bytes:
    """The published bytes (pure): the webhook JSON document."""
    return json.dumps(payload(data), ensure_ascii=False).encode()


def add(db, notice_id: int, topic: str, now: dt.datetime) -> None:
    db.execute("INSERT OR IGNORE INTO mw_mqtt (notice_id, topic, state, next_attempt) VALUES (?,?,'pending',?)",
               (notice_id, topic, now.isoformat()))


def supersede(db, window_id: str, customer: str, sequence: int, why: str) -> None:
    db.execute("UPDATE mw_mqtt SET state='superseded', last_error=? WHERE state='pending' AND notice_id IN "
               "(SELECT id FROM mw_outbox WHERE window_id=? AND customer=? AND sequence<?)",
               (why, window_id, customer, sequence))


def next_due(db) -> dt.datetime | None:
    r = db.execute("SELECT MIN(next_attempt) AS t FROM mw_mqtt WHERE state='pending'").fetchone()
    return dt.datetime.fromisoformat(r["t"]) if r and r["t"] else None


def due_now(db, now: dt.datetime) -> int:
    """The bridge (re)connected: every waiting row is due now (no need to sit out the backoff)."""
    return db.execute("UPDATE mw_mqtt SET next_attempt=? WHERE state='pending'", (now.isoformat(),)).rowcount


def retarget(db, customer: str, contact: ContactVersion, now: dt.datetime) -> int:
    """A new fault contact with a topic: this customer's undelivered notices of open windows go there.

    Rows waiting or failed move to the new topic; notices that had no MQTT row (the old
    contact had no topic) and are not delivered by e-mail get one.
    """
    if not contact.mqtt_topic:
        return 0
    open_notices = ("SELECT o.id FROM mw_outbox o JOIN mw_window w ON w.id=o.window_id WHERE o.customer=? "
                    "AND w.state NOT IN ('completed','cancelled')")
    n = db.execute(f"UPDATE mw_mqtt SET topic=?, state='pending', attempts=0, next_attempt=?, last_error='' "
                   f"WHERE state IN ('pending','failed') AND notice_id IN ({open_notices})",
                   (contact.mqtt_topic, now.isoformat(), customer)).rowcount
    n += db.execute(f"INSERT INTO mw_mqtt (notice_id, topic, state, next_attempt) SELECT id, ?, 'pending', ? "
                    f"FROM mw_outbox WHERE id IN ({open_notices}) AND state IN ('pending','failed') "
                    f"AND id NOT IN (SELECT notice_id FROM mw_mqtt)",
                    (contact.mqtt_topic, now.isoformat(), customer)).rowcount
    return n


class MqttDelivery:
    """Publishes due rows through ``bridge()`` (an ``interfaces.NoticePublisher``, or None)."""

    def __init__(self, store, clock, bridge, on_result=None):
        self.store, self.clock, self.bridge = store, clock, bridge
        self.on_result = on_result or (lambda kind, result: None)

    async def run_once(self, limit: int = 50) -> int:
        with self.store.transaction() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT m.*, o.payload, o.kind FROM mw_mqtt m JOIN mw_outbox o ON o.id=m.notice_id "
                "WHERE m.state='pending' AND m.next_attempt<=? ORDER BY m.notice_id LIMIT ?",
                (self.clock.now().isoformat(), limit)).fetchall()]
        for row in rows:
            data = load_payload(row["payload"])
            bridge = self.bridge()
            if bridge is None:
                ok, error = False, "no MQTT bridge in this daemon"
            else:
                ok, error = await bridge.publish_notice(row["topic"], body(data))
            attempts = row["attempts"] + 1
            result = "delivered" if ok else ("failed" if attempts >= MAX_ATTEMPTS else "retry")
            now = self.clock.now()
            nxt = now + dt.timedelta(seconds=backoff(attempts)) if result == "retry" else now
            with self.store.transaction() as db:
                db.execute("UPDATE mw_mqtt SET state=?, attempts=?, next_attempt=?, last_error=?, delivered_at=? "
                           "WHERE notice_id=? AND state='pending'",
                           ("pending" if result == "retry" else result, attempts, nxt.isoformat(), error,
                            now.isoformat() if ok else None, row["notice_id"]))
            if not ok:
                log.warning("mqtt notice %s: %s (%s)", data.message_id, result, error)
            self.on_result(row["kind"], result)
        return len(rows)
