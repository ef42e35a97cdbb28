"""Webhook delivery of notices (the fault contact's optional ``webhook``).

Each notice row for a contact with a webhook gets one ``mw_hook`` row. Delivery
POSTs a JSON rendering of the notice (with the iCalendar text) and an
``Idempotency-Key`` header equal to the notice's Message-ID. It is at-least-once:
after a crash in the middle of a POST the request is repeated with the same key,
which receivers use to de-duplicate. 2xx is delivered; 408, 425, 429, 5xx and
connection errors are retried with the outbox backoff; other 4xx fail at once.
``HookChannel`` is this channel of the shared outbox loop (nocpolicy.notices.outbox); other
notice sources (suspension letters) use the same class on their own delivery table with their
own JSON document (``table``, ``body``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request

from ..notices.outbox import Attempt, RowChannel, Table, no_session
from .lifecycle import BCOP_STATUS
from .notice import NoticeData, calendar
from .outbox import load_payload

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


def notice_body(row: dict) -> dict:
    """The document of a maintenance notice's delivery row (its ``mw_outbox`` payload)."""
    return payload(load_payload(row["payload"]))


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


class HookChannel(RowChannel):
    """``enabled()``: maintenance.webhooks (off by default: no outbound HTTP to customer-supplied URLs)."""

    name = "webhook"
    table = Table("mw_hook", "notice_id", "url", "sent", "sent_at",
                  "SELECT mw_hook.*, o.payload, o.kind, o.message_id FROM mw_hook "
                  "JOIN mw_outbox o ON o.id=mw_hook.notice_id WHERE")

    def __init__(self, enabled, *, table: Table | None = None, body=None):
        self.enabled = enabled
        if table is not None:
            self.table = table            # rows of another notice source (with its payload and message_id)
        self.body = body or notice_body   # row -> the JSON document POSTed

    def target(self, contact) -> str | None:
        return contact.webhook if self.enabled() else None

    def session(self):
        return no_session(self.deliver)

    async def deliver(self, row: dict) -> Attempt:
        status, error = await asyncio.to_thread(post, row["url"], self.body(row), row["message_id"])
        result = classify(status)
        return Attempt(result == "sent", result == "retry", error, {"status": status})
