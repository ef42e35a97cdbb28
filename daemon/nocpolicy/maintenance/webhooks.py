"""Webhook delivery of notices (the fault contact's optional ``webhook``).

Each notice row for a contact with a webhook gets one ``mw_hook`` row. Delivery
POSTs a JSON rendering of the notice (with the iCalendar text) and an
``Idempotency-Key`` header equal to the notice's Message-ID. It is at-least-once:
after a crash in the middle of a POST the request is repeated with the same key,
which receivers use to de-duplicate. 2xx is delivered; 408, 425, 429, 5xx and
connection errors are retried with the outbox backoff; other 4xx fail at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import urllib.error
import urllib.request

from .contacts import ContactVersion
from .lifecycle import BCOP_STATUS
from .notice import NoticeData, calendar
from .outbox import MAX_ATTEMPTS, backoff, load_payload

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 425, 429}


def payload(n: NoticeData) -> dict:
    """What the webhook receives (pure)."""
    return {"message_id": n.message_id, "provider": n.provider, "account": n.customer_id,
            "maintenance_id": n.window_id, "window_kind": n.window_kind, "notice": n.notice_kind,
            "sequence": n.sequence, "status": BCOP_STATUS[n.notice_kind], "impact": n.impact,
            "start": n.start.isoformat(), "end": n.end.isoformat(), "tz": n.tz,
            "reason": {"ja": n.reason_ja, "en": n.reason_en}, "objects": list(n.objects), "urgent": n.urgent,
            "sent": n.created.isoformat(), "icalendar": calendar(n).decode()}


def classify(status: int | None) -> str:
    """sent | retry | failed for an HTTP status (None: no answer)."""
    if status is not None and 200 <= status < 300:
        return "sent"
    if status is None or status >= 500 or status in RETRY_STATUS:
        return "retry"
    return "failed"


def post(url: str, body: dict, key: str, timeout: float = 10.0) -> tuple[int | None, str]:
    req = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Idempotency-Key": key,
                                          "User-Agent": "nocpolicy-notices"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, ""
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{getattr(exc, 'reason', exc)}"


def next_due(db) -> dt.datetime | None:
    r = db.execute("SELECT MIN(next_attempt) AS t FROM mw_hook WHERE state='pending'").fetchone()
    return dt.datetime.fromisoformat(r["t"]) if r and r["t"] else None


def retarget(db, customer: str, contact: ContactVersion, now: dt.datetime) -> int:
    if not contact.webhook:
        return 0
    cur = db.execute("UPDATE mw_hook SET url=?, state='pending', attempts=0, next_attempt=?, last_error='' "
                     "WHERE state IN ('pending','failed') AND notice_id IN (SELECT o.id FROM mw_outbox o JOIN "
                     "mw_window w ON w.id=o.window_id WHERE o.customer=? AND w.state NOT IN ('completed',"
                     "'cancelled'))", (contact.webhook, now.isoformat(), customer))
    return cur.rowcount


class HookDelivery:
    def __init__(self, store, clock, on_result=None):
        self.store, self.clock = store, clock
        self.on_result = on_result or (lambda kind, result: None)

    async def run_once(self, limit: int = 50) -> int:
        with self.store.transaction() as db:
            rows = [dict(r) for r in db.execute(
                "SELECT h.*, o.payload, o.kind FROM mw_hook h JOIN mw_outbox o ON o.id=h.notice_id "
                "WHERE h.state='pending' AND h.next_attempt<=? ORDER BY h.notice_id LIMIT ?",
                (self.clock.now().isoformat(), limit)).fetchall()]
        for row in rows:
            data = load_payload(row["payload"])
            status, error = await asyncio.to_thread(post, row["url"], payload(data), data.message_id)
            result = classify(status)
            attempts = row["attempts"] + 1
            if result == "retry" and attempts >= MAX_ATTEMPTS:
                result = "failed"
            now = self.clock.now()
            nxt = now + dt.timedelta(seconds=backoff(attempts)) if result == "retry" else now
            with self.store.transaction() as db:
                db.execute("UPDATE mw_hook SET state=?, attempts=?, next_attempt=?, last_error=?, status=?, "
                           "sent_at=? WHERE notice_id=? AND state='pending'",
                           ("pending" if result == "retry" else result, attempts, nxt.isoformat(), error, status,
                            now.isoformat() if result == "sent" else None, row["notice_id"]))
            if result != "sent":
                log.warning("webhook for notice %s: %s (%s)", data.message_id, result, error)
            self.on_result(row["kind"], result)
        return len(rows)
