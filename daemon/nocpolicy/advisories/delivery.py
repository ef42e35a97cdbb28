"""Alert delivery: the ``adv_alert`` rows as an exactly-once e-mail channel of the shared
outbox loop (``notices.outbox``), sent through the SMTP relay configured for notices
(``maintenance.smtp``; the mailer is handed in by app.wire; without SMTP, alerts wait),
``adv_hook`` rows POSTed to the contact's webhook (with ``maintenance.webhooks`` on;
at-least-once, ``Idempotency-Key`` = the alert's Message-ID, as for maintenance notices) and
``adv_mqtt`` rows published to the contact's ``mqtt_topic`` through the MQTT bridge."""

from __future__ import annotations

import asyncio
import contextlib
import json

from ..maintenance.webhooks import classify, post
from ..notices.outbox import Attempt, RowChannel, Table, no_session
from .alert import render

SELECT = ("SELECT adv_alert.*, c.source, c.service, c.finding, c.address, c.port, c.first_seen, c.last_seen, "
          "c.reports, c.state AS case_state FROM adv_alert JOIN adv_case c ON c.id = adv_alert.case_id WHERE")


class AlertChannel:
    name = "email"
    exactly_once = True
    table = Table("adv_alert", "id", "recipient", "sent", "sent_at", SELECT)

    def __init__(self, mailer, settings):
        self.mailer = mailer            # () -> maintenance.smtp.Mailer | None
        self.settings = settings        # () -> policy Settings (provider, timezone)

    def ready(self) -> bool:
        return self.mailer() is not None

    def target(self, contact) -> str | None:
        return contact.email

    def add(self, db, notice_id: int, target: str, now) -> bool:
        return False                    # the alert row is the e-mail row

    def retarget(self, db, notices_sql, undelivered_sql, params, target, contact, now) -> int:
        return 0

    @contextlib.asynccontextmanager
    async def session(self):
        mailer = self.mailer()
        s = self.settings()
        async with mailer.session() as smtp:
            async def deliver(row: dict) -> Attempt:
                case = {**row, "id": row["case_id"]}
                msg = render(case, sender=mailer.cfg.sender, recipient=row["recipient"], language=row["language"],
                             provider=s.provider, tz=s.timezone)
                outcome = await smtp.send(msg, [row["recipient"]])
                return Attempt(outcome.ok, outcome.temporary, outcome.error,
                               {"result": json.dumps(outcome.recipients, ensure_ascii=False)})
            yield deliver


def hook_payload(row: dict, provider: str, tz: str) -> dict:
    """What the webhook receives (pure): the facts, and the alert text in both languages."""
    case = {**row, "id": row["case_id"]}
    msg = render(case, sender="-", recipient="-", language="ja+en", provider=provider, tz=tz)
    return {"message_id": row["message_id"], "provider": provider, "account": row["customer"],
            "case": row["case_id"], "source": row["source"], "service": row["service"], "finding": row["finding"],
            "address": row["address"], "port": row["port"], "first_seen": row["first_seen"],
            "last_seen": row["last_seen"], "reports": row["reports"], "text": msg.get_content()}


class AlertHookChannel(RowChannel):
    name = "webhook"
    table = Table("adv_hook", "alert_id", "url", "sent", "sent_at",
                  "SELECT adv_hook.*, a.message_id, a.customer, a.case_id, c.source, c.service, c.finding, "
                  "c.address, c.port, c.first_seen, c.last_seen, c.reports, a.created FROM adv_hook "
                  "JOIN adv_alert a ON a.id = adv_hook.alert_id JOIN adv_case c ON c.id = a.case_id WHERE")

    def __init__(self, settings):
        self.settings = settings        # () -> policy Settings (provider, timezone)

    def target(self, contact) -> str | None:
        return None                     # rows are written by the importer

    def session(self):
        return no_session(self.deliver)

    async def deliver(self, row: dict) -> Attempt:
        s = self.settings()
        body = hook_payload(row, s.provider, s.timezone)
        status, error = await asyncio.to_thread(post, row["url"], body, row["message_id"])
        result = classify(status)
        return Attempt(result == "sent", result == "retry", error, {"status": status})


class AlertMqttChannel(RowChannel):
    """The contact's ``mqtt_topic``: the webhook's JSON document, QoS 1, not retained, through the
    MQTT bridge (``NoticePublisher``, handed in by app.wire); delivered on PUBACK."""

    name = "mqtt"
    table = Table("adv_mqtt", "alert_id", "topic", "delivered", "delivered_at",
                  AlertHookChannel.table.select.replace("adv_hook", "adv_mqtt"))

    def __init__(self, settings):
        self.settings = settings
        self.publisher = None           # notices.publisher.NoticePublisher

    def target(self, contact) -> str | None:
        return None                     # rows are written by the importer

    def session(self):
        return no_session(self.deliver)

    async def deliver(self, row: dict) -> Attempt:
        if self.publisher is None:
            return Attempt(False, True, "no MQTT bridge in this daemon")
        s = self.settings()
        body = json.dumps(hook_payload(row, s.provider, s.timezone), ensure_ascii=False).encode()
        ok, error = await self.publisher.publish_notice(row["topic"], body)
        return Attempt(ok, True, error)
