"""Maintenance and fault windows with lawful notices (Art. 24): the component wiring.

Decisions live in deadline.py, lifecycle.py, scope.py and notice.py (pure);
service.py changes windows and queues notices in one transaction; the shared
outbox loop (nocpolicy.notices.outbox) delivers them through the e-mail, webhook
and MQTT channels; this module runs the loops (timed transitions, delivery, silences),
syncs windows and contacts from the policy, and exposes commands and metrics.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..clock import nap
from ..component import Component
from ..errors import NocpolicyError
from ..notices.outbox import Outbox
from ..notices.publisher import ContactListener, NoticePublisher
from . import commands, contacts, mqttnotices, outbox, silences, webhooks, windows
from .lifecycle import FINAL, NOTICE_FOR, STATES
from .schema import MIGRATIONS
from .service import Change, Service
from .smtp import Mailer, read_password

log = logging.getLogger(__name__)

MAX_NAP = 60.0          # look again at least this often (wall-clock jumps, missed pokes)
MIN_NAP = 0.2           # never spin: even after an error, wait this long before looking again
NOTICE_KINDS = tuple(k for k, _ in NOTICE_FOR.values())
RESULTS = ("sent", "retry", "failed")


class Maintenance(Component):
    name = "maintenance"

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.store.migrate("maintenance", MIGRATIONS)
        self.mailer: Mailer | None = None
        self.webhooks_enabled = False
        self.mqtt = mqttnotices.MqttChannel()
        channels = (outbox.EmailChannel(lambda: self.mailer),
                    webhooks.HookChannel(lambda: self.webhooks_enabled), self.mqtt)
        self.notices = Outbox(ctx.store, ctx.clock, channels, notice_table=outbox.TABLE, on_result=self._counted)
        self.service = Service(ctx.store, ctx.clock, ctx.policy, self.notices)
        self.results = {(k, r): 0 for k in NOTICE_KINDS for r in RESULTS}
        self.hook_results = {r: 0 for r in RESULTS}
        self.mqtt_results = {r: 0 for r in mqttnotices.RESULTS}
        self._wake_windows = asyncio.Event()
        self._wake_silences = asyncio.Event()
        self.alertmanager: silences.AlertmanagerClient | None = None
        self.silence_error = ""
        self.contact_listeners: list[ContactListener] = []

    @property
    def smtp_configured(self) -> bool:
        return self.mailer is not None

    # -- policy ------------------------------------------------------------------------------------

    async def prepare(self, policy, change):
        m = policy.maintenance
        password = None
        if m.smtp and m.smtp.password_file:
            password = await asyncio.to_thread(read_password, m.smtp.password_file)
        plan = self._plan_policy_windows(policy)
        mailer = Mailer(m.smtp, password) if m.smtp else None
        am = silences.AlertmanagerClient(m.alertmanager) if m.alertmanager else None

        def commit():
            self.mailer = mailer
            self.alertmanager = am
            self.webhooks_enabled = m.webhooks
            self._sync(policy, plan)
        return commit

    def _plan_policy_windows(self, policy) -> list[tuple[str, windows.WindowRecord]]:
        """What the policy's windows mean for the store; refuse windows whose notice is already late."""
        now = self.ctx.clock.now()
        with self.ctx.store.transaction() as db:
            stored = windows.load_all(db)
        rules = policy.maintenance.notice
        tz = policy.settings.timezone
        from .deadline import check_notice
        plan, problems = [], []
        for w in policy.maintenance.windows:
            rec = windows.from_policy(w)
            old = stored.get(w.id)
            if old is not None and old.source != "policy":
                problems.append(f"{w.loc}: maintenance.windows[id={w.id}]: a window with this id was created at "
                                "runtime; choose another id")
                continue
            if old is not None and (old.state in FINAL or windows.same_content(old, rec)):
                continue
            if rec.end <= now:
                plan.append(("import", rec) if old is None else ("skip", rec))
                continue
            if old is not None and old.state == "active" and rec.start != old.start:
                problems.append(f"{w.loc}: maintenance.windows[id={w.id}].start: the window is active; its start "
                                "cannot move (change the end, or remove the window to end it now)")
                continue
            inside = old is not None and old.start <= rec.start and rec.end <= old.end
            if not inside and (old is None or old.state != "active"):
                v = check_notice(rec.kind, rec.start, now, urgent=rec.urgent, justification=rec.justification,
                                 days=rules.planned_days, tz=tz)
                if not v.ok:
                    problems.append(f"{w.loc}: maintenance.windows[id={w.id}].start: {v.reason}")
                    continue
            plan.append(("create" if old is None else "update", rec))
        ids = {w.id for w in policy.maintenance.windows}
        for old in stored.values():
            if old.source == "policy" and old.id not in ids and old.state not in FINAL:
                plan.append(("cancel", old))
        if problems:
            raise NocpolicyError("; ".join(problems))
        return plan

    def _sync(self, policy, plan) -> None:
        """Runs in commit(): contacts first (notices record them), then policy windows. Logged, never raised."""
        now = self.ctx.clock.now()
        try:
            with self.ctx.store.transaction() as db:
                added = contacts.sync_policy(db, policy.customers, now)
                for cv in added:
                    if cv.version > 1:      # a changed policy contact: undelivered notices follow it
                        self.notices.retarget(db, outbox.OPEN_NOTICES, (cv.customer,), cv, now)
                        self.ctx.store.audit("policy", "contact.set", f"customer:{cv.customer}", None,
                                             cv.as_dict(), db=db)
            if added:
                self.notices.poke()
                self.contacts_changed()
        except NocpolicyError as exc:
            log.error("maintenance: recording policy fault contacts failed: %s", exc)
        svc = Service(self.ctx.store, self.ctx.clock, lambda: policy, self.notices)
        for action, rec in plan:
            try:
                if action == "create":
                    self.published(svc.create(rec, "policy"))
                elif action == "import":
                    svc.import_finished(rec, "policy")
                elif action == "update":
                    fields = {k: getattr(rec, k) for k in ("kind", "start", "end", "reason_ja", "reason_en",
                                                           "impact", "scope", "urgent", "justification")}
                    self.published(svc.update(rec.id, fields, "policy"))
                elif action == "cancel":
                    self.published(svc.cancel(rec.id, "removed from the policy", "policy"))
            except NocpolicyError as exc:     # checked in prepare; only a race with the clock gets here
                log.error("maintenance: policy window %s (%s) not applied: %s", rec.id, action, exc)

    # -- running -----------------------------------------------------------------------------------

    async def start(self) -> None:
        with self.ctx.store.transaction() as db:
            n = self.notices.recover(db, self.ctx.clock.now())
        if n:
            log.warning("maintenance: %d notice(s) were being sent when the daemon stopped; sending them again "
                        "with the same Message-ID", n)
        self.tasks.supervise("lifecycle", self._lifecycle_loop)
        self.tasks.supervise("delivery", self.notices.run)
        self.tasks.supervise("silences", self._silence_loop)
        self.set_state("running", "" if self.mailer else "no SMTP configured: notices wait in the outbox")

    def poke(self) -> None:
        self._wake_windows.set()
        self.notices.poke()
        self._wake_silences.set()

    def published(self, change: Change) -> None:
        for kind, payload in change.events:
            self.ctx.events.publish(kind, payload)
        self.poke()

    def tick(self) -> list[Change]:
        changes = self.service.tick()
        for c in changes:
            self.published(c)
        return changes

    async def _lifecycle_loop(self) -> None:
        while True:
            try:
                self.tick()
            except NocpolicyError as exc:
                log.error("maintenance: timed transitions failed: %s", exc)
            wake = self.service.next_wake()
            delay = MAX_NAP if wake is None else (wake - self.ctx.clock.now()).total_seconds()
            await nap(self.ctx.clock, self._wake_windows, min(MAX_NAP, max(MIN_NAP, delay)))

    async def _silence_loop(self) -> None:
        """Keep Alertmanager silences in line with the open windows (when maintenance.alertmanager is set)."""
        while True:
            am = self.alertmanager
            if am is not None:
                policy = self.ctx.policy()
                node = getattr(self.ctx.options, "node", None) or policy.settings.node
                try:
                    want = silences.desired(node, self.service.all().values(), self.service.customers_of,
                                            self.ctx.clock.now())
                    for action, what in await silences.reconcile(am, node, want):
                        log.info("maintenance: alertmanager silence %s %s", action, what)
                    self.silence_error = ""
                except NocpolicyError as exc:
                    if str(exc) != self.silence_error:
                        log.warning("maintenance: %s (will retry)", exc)
                    self.silence_error = str(exc)
            await nap(self.ctx.clock, self._wake_silences, MAX_NAP)

    def set_notice_publisher(self, publisher: NoticePublisher) -> None:
        """app.py: MQTT notices go out through this publisher (the MQTT bridge)."""
        self.mqtt.publisher = publisher

    # -- LetterPost (notices/publisher.py): other areas' letters use the SMTP relay and the contacts --

    def letter_mailer(self):
        return self.mailer

    def add_contact_listener(self, listener: ContactListener) -> None:
        self.contact_listeners.append(listener)

    def contacts_changed(self) -> None:
        """After a new contact version was committed: tell the other areas' letters."""
        for listener in self.contact_listeners:
            try:
                listener.contacts_changed()
            except NocpolicyError as exc:
                log.error("maintenance: a contact change could not be passed on: %s", exc)

    def _counted(self, channel, row: dict, result: str) -> None:
        if channel.name == "webhook":
            self.hook_results[result] = self.hook_results.get(result, 0) + 1
            return
        if channel.name == "mqtt":
            self.mqtt_results[result] = self.mqtt_results.get(result, 0) + 1
            return
        key = (row["kind"], result)
        self.results[key] = self.results.get(key, 0) + 1
        self.ctx.events.publish("notice", {"window": row["window_id"], "customer": row["customer"],
                                           "kind": row["kind"], "sequence": row["sequence"], "result": result,
                                           "message_id": row["message_id"],
                                           "contact_version": row["contact_version"]})

    def mqtt_connected(self) -> None:
        """NoticeLinkListener: the MQTT bridge (re)connected, so MQTT notices waiting are due at once."""
        try:
            self.notices.due_now(self.mqtt.name)
        except NocpolicyError as exc:
            log.error("maintenance: MQTT notices after reconnect: %s", exc)

    # -- reading -----------------------------------------------------------------------------------

    def suspended(self) -> set[str]:
        """Customers in an active window with an impact (for metrics and other components)."""
        out: set[str] = set()
        for w in self.service.all().values():
            if w.state == "active" and w.impact != "NO-IMPACT":
                out.update(self.service.customers_of(w))
        return out

    def commands(self):
        return commands.build(self)

    def collectors(self):
        return [_Collector(self)]

    def status(self) -> dict:
        d = super().status()
        try:
            with self.ctx.store.transaction() as db:
                states = {r["state"]: r["n"] for r in
                          db.execute("SELECT state, COUNT(*) AS n FROM mw_window GROUP BY state").fetchall()}
                pending = db.execute("SELECT COUNT(*) AS n FROM mw_outbox WHERE state IN ('pending','sending')"
                                     ).fetchone()["n"]
        except NocpolicyError:
            return d
        d.update({"windows": states, "notices_pending": pending, "smtp": self.smtp_configured,
                  "alertmanager": (self.silence_error or "ok") if self.alertmanager else None})
        return d


class _Collector:
    """Maintenance metrics computed at scrape time from the store and plain integers."""

    def __init__(self, comp: Maintenance):
        self.comp = comp

    def collect(self):
        store, now = self.comp.ctx.store, self.comp.ctx.clock.now()
        g = GaugeMetricFamily("nocpolicy_maintenance_windows", "Maintenance and fault windows by kind and state",
                              labels=["kind", "state"])
        with store.transaction() as db:
            counts = {(r["kind"], r["state"]): r["n"] for r in db.execute(
                "SELECT kind, state, COUNT(*) AS n FROM mw_window GROUP BY kind, state").fetchall()}
            pending = db.execute("SELECT COUNT(*) AS n FROM mw_outbox WHERE state IN ('pending','sending')"
                                 ).fetchone()["n"]
            oldest = outbox.oldest_pending(db)
        for kind in ("planned", "fault"):
            for state in STATES:
                g.add_metric([kind, state], counts.get((kind, state), 0))
        yield g
        c = CounterMetricFamily("nocpolicy_notices", "Notice delivery attempts by notice kind and result "
                                "(sent, retry, failed)", labels=["kind", "result"])
        for (kind, result), n in sorted(self.comp.results.items()):
            c.add_metric([kind, result], n)
        yield c
        h = CounterMetricFamily("nocpolicy_notice_webhooks", "Webhook delivery attempts of notices by result",
                                labels=["result"])
        for result, n in sorted(self.comp.hook_results.items()):
            h.add_metric([result], n)
        yield h
        q = CounterMetricFamily("nocpolicy_notice_mqtt", "MQTT delivery attempts of notices to contacts' "
                                "mqtt_topic by result (delivered, retry, failed)", labels=["result"])
        for result, n in sorted(self.comp.mqtt_results.items()):
            q.add_metric([result], n)
        yield q
        yield GaugeMetricFamily("nocpolicy_notices_pending", "Notices waiting in the outbox (pending or sending)",
                                value=pending)
        yield GaugeMetricFamily("nocpolicy_notice_oldest_pending_seconds",
                                "Age of the oldest notice not yet delivered (0 if none)",
                                value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        yield GaugeMetricFamily("nocpolicy_suspended_customers",
                                "Customers in an active maintenance or fault window with an impact",
                                value=len(self.comp.suspended()))


