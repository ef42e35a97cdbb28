"""Alert delivery: the ``adv_alert`` rows as an exactly-once e-mail channel of the shared
outbox loop (``notices.outbox``), sent through the SMTP relay configured for notices
(``maintenance.smtp``; the mailer is handed in by app.wire). Without SMTP, alerts wait."""

from __future__ import annotations

import contextlib
import json

from ..notices.outbox import Attempt, Table
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
