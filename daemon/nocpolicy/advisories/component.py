"""NICT advisories (Art. 45(3)): import, attribute, de-duplicate into cases, alert customers.

``advisory.import`` (CLI, admin API, MQTT) takes CSV or JSON; every advisory is attributed
(``Attribution``: static prefixes, then the sessions area's ``whois`` at that time and
port), joined to the open case of the same customer and finding within
``advisories.dedup_window`` or opens a new case with an alert to the customer's fault
contact, in their language, delivered by the shared outbox loop. ``advisories`` lists cases
or sums them up; ``advisory.resolve`` resolves or closes one. Metrics per state and source,
no customer labels. docs/advisories.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..component import Component
from ..control.commands import Command
from ..errors import Conflict, Invalid, NotFound
from ..notices.outbox import Outbox
from ..policy.fields import as_bool, as_id, as_str, int_range
from . import cases
from .delivery import AlertChannel, AlertHookChannel, AlertMqttChannel
from .model import SOURCES, STATES, parse_advisories

log = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0


class Advisories(Component):
    name = "advisories"

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.store.migrate("advisories", cases.MIGRATIONS)
        self.attribution = None                    # Attribution, from app.wire
        self.mailer = None                         # () -> Mailer | None, from app.wire (maintenance.smtp)
        self.channel = AlertChannel(lambda: self.mailer() if self.mailer else None,
                                    lambda: ctx.policy().settings)
        settings = lambda: ctx.policy().settings          # noqa: E731
        self.mqtt = AlertMqttChannel(settings)
        self.outbox = Outbox(ctx.store, ctx.clock, (self.channel, AlertHookChannel(settings), self.mqtt),
                             notice_table="adv_alert", on_result=self._delivered)
        self.received = {(s, r): 0 for s in SOURCES for r in ("new", "attached", "duplicate", "unattributable")}
        self.alerts = {"sent": 0, "retry": 0, "failed": 0}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        with self.ctx.store.transaction() as db:
            self.outbox.recover(db, self.ctx.clock.now())
        self.tasks.supervise("advisory-alerts", self.outbox.run)
        self.tasks.supervise("advisory-prune", self._prune_loop)
        await super().start()

    def set_notice_publisher(self, publisher) -> None:
        """app.wire: alerts to a contact's mqtt_topic go out through the MQTT bridge."""
        self.mqtt.publisher = publisher

    def mqtt_connected(self) -> None:
        """NoticeLinkListener: the bridge (re)connected; alerts waiting for it are due now."""
        self.outbox.due_now(self.mqtt.name)

    def _delivered(self, channel, row: dict, result: str) -> None:
        result = "sent" if result == "delivered" else result
        self.alerts[result if result in self.alerts else "sent"] += 1
        if result == "sent":           # any channel: the customer has been told
            with self.ctx.store.transaction() as db:
                db.execute("UPDATE adv_case SET state='notified', updated=? WHERE id=? AND state='open'",
                           (self.ctx.clock.now().isoformat(), row["case_id"]))

    async def _prune_loop(self) -> None:
        while True:
            keep = self.ctx.policy().advisories.retention
            with self.ctx.store.transaction() as db:
                n = cases.prune(db, self.ctx.clock.now() - dt.timedelta(seconds=keep))
            if n:
                log.info("advisories: %d finished case(s) past retention removed", n)
            await asyncio.sleep(PRUNE_EVERY if n < 10000 else 1)

    # -- commands --------------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [Command("advisory.import", self._cmd_import, "import NICT advisories (text: CSV or JSON)"),
                Command("advisories", self._cmd_list, "advisory cases (state, customer, limit) or a summary",
                        mutating=False),
                Command("advisory.resolve", self._cmd_resolve, "resolve or close an advisory case")]

    async def _cmd_import(self, args, inv) -> dict:
        text = args.req("text", as_str)
        fmt = args.get("format", as_str, "auto")
        name = (args.get("source", as_str, "advisories") or "advisories")[:200]
        args.check()
        async with self._lock:
            out = await asyncio.to_thread(self.import_text, text, fmt, name, inv.actor)
        self.outbox.poke()
        return out

    def import_text(self, text: str, fmt: str, name: str, actor: str) -> dict:
        """Blocking: parse (whole or nothing), attribute, record cases and alerts in one transaction."""
        advisories = parse_advisories(text, fmt, name)
        attribute = self.attribution.attribute if self.attribution is not None else (
            lambda a, t, p: (None, "attribution is not available"))
        owners = [attribute(a.address, a.time.timestamp(), a.port) for a in advisories]
        policy = self.ctx.policy()
        smtp = policy.maintenance.smtp
        domain = (smtp.sender.rpartition("@")[2] if smtp else "") or "nocpolicy.invalid"
        with self.ctx.store.transaction() as db:
            imp = cases.Importer(db, self.ctx.clock.now(), policy.advisories.dedup_window,
                                 self._contact_of(policy), domain, hooks=policy.maintenance.webhooks)
            imp.load_open({c for c, _ in owners if c})
            for a, (cid, why) in zip(advisories, owners, strict=True):
                imp.add(a, cid, why)
            res = imp.finish()
            self.ctx.store.audit(actor, "advisory.import", f"advisories:{name}", None, res.as_dict(), db=db)
        for k, n in res.by_source.items():
            self.received[k] = self.received.get(k, 0) + n
        log.info("advisories: %s imported by %s: %s", name, actor, res.as_dict())
        return res.as_dict()

    def _contact_of(self, policy):
        by_id = policy.customers_by_id

        def contact_of(db, cid: str):
            try:
                r = db.execute("SELECT email, language, version, webhook, mqtt_topic FROM mw_contact WHERE "
                               "customer=? ORDER BY version DESC LIMIT 1", (cid,)).fetchone()
            except sqlite3.OperationalError:      # maintenance is not part of this daemon
                r = None
            if r is not None:
                return r["email"], r["language"], r["version"], r["webhook"], r["mqtt_topic"]
            c = by_id.get(cid)
            if c is None:
                return None, "ja+en", None, None, None
            return c.contact.email, c.contact.language, None, c.contact.webhook, c.contact.mqtt_topic
        return contact_of

    async def _cmd_list(self, args, inv) -> dict:
        state = args.get("state", as_str, None)
        cid = args.get("customer", as_id, None)
        limit = args.get("limit", int_range(1, 10_000), 100)
        summary = args.get("summary", as_bool, False)
        args.check()
        if state is not None and state not in STATES:
            raise Invalid(f"state must be one of {', '.join(STATES)}", field="state")

        def read() -> dict:
            with self.ctx.store.transaction() as db:
                if summary:
                    return cases.summary(db)
                return {"cases": cases.listing(db, state=state, customer=cid, limit=limit or 100)}
        return await asyncio.to_thread(read)

    async def _cmd_resolve(self, args, inv) -> dict:
        case_id = args.req("case", int_range(1, 2**62))
        state = args.get("state", as_str, "resolved") or "resolved"
        reason = args.get("reason", as_str, "") or ""
        args.check()
        if state not in ("resolved", "closed"):
            raise Invalid("state must be resolved or closed", field="state")
        now = self.ctx.clock.now().isoformat()
        with self.ctx.store.transaction() as db:
            r = db.execute("SELECT state FROM adv_case WHERE id=?", (case_id,)).fetchone()
            if r is None:
                raise NotFound(f"no advisory case {case_id}", field="case")
            allowed = ("open", "notified") if state == "resolved" else ("open", "notified", "unattributable")
            if r["state"] not in allowed:
                raise Conflict(f"case {case_id} is {r['state']}; cannot become {state}", field="state")
            db.execute("UPDATE adv_case SET state=?, reason=?, updated=? WHERE id=?", (state, reason, now, case_id))
            self.ctx.store.audit(inv.actor, "advisory.resolve", f"advisory-case:{case_id}", {"state": r["state"]},
                                 {"state": state, "reason": reason}, db=db)
        return {"case": case_id, "state": state, "before": r["state"]}

    def collectors(self) -> list:
        return [AdvisoryCollector(self)]


class AdvisoryCollector:
    def __init__(self, comp: Advisories):
        self.comp = comp

    def describe(self):
        return []

    def collect(self):
        g = GaugeMetricFamily("nocpolicy_advisory_cases", "NICT advisory cases by state and source",
                              labels=["state", "source"])
        with self.comp.ctx.store.transaction() as db:
            have = {(r["state"], r["source"]): r["n"] for r in
                    db.execute("SELECT state, source, COUNT(*) AS n FROM adv_case GROUP BY state, source")}
        for st in STATES:
            for src in SOURCES:
                g.add_metric([st, src], have.get((st, src), 0))
        yield g
        c = CounterMetricFamily("nocpolicy_advisories_received", "NICT advisories imported, by source and "
                                "result (new case, attached to a case, duplicate, unattributable)",
                                labels=["source", "result"])
        for (src, res), n in sorted(self.comp.received.items()):
            c.add_metric([src, res], n)
        yield c
        a = CounterMetricFamily("nocpolicy_advisory_alerts", "Advisory alert delivery attempts by result",
                                labels=["result"])
        for res, n in self.comp.alerts.items():
            a.add_metric([res], n)
        yield a
