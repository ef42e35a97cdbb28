"""Suspensions (Art. 25, 27): the component wiring.

Commands (commands.py) record a suspension and queue its notice (service.py); this module
runs the timer that starts and ends suspensions at their times and raises the Art. 27
``terminable`` event, pushes each change to the subscribers area as a ``suspension``
decision (so the DNS guard, qos and the notice page see it on the next query or packet),
serves the notice page when it is configured (moving it when a reload changes its address),
delivers the letters (delivery.py) and exposes the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..clock import nap
from ..component import Component
from ..errors import NocpolicyError
from ..interfaces import SuspensionEnforcer
from ..notices.outbox import Outbox
from ..notices.publisher import LetterPost, NoticePublisher
from ..subscribers.model import MODES, Decision
from ..subscribers.suspensions import decision_value
from . import commands, delivery, fleetend, page
from .pageserver import PageServer
from .rules import next_due
from .service import Service

log = logging.getLogger(__name__)

MAX_NAP = 60.0
MIN_NAP = 0.2
STATES = ("scheduled", "active", "ended", "terminated")


class Suspensions(Component):
    name = "suspension"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.post: LetterPost | None = None
        self.enforcer: SuspensionEnforcer | None = None     # qos: the walled garden in nftables
        chans = delivery.channels(lambda: self.post.letter_mailer() if self.post else None,
                                  lambda: ctx.policy() is not None and ctx.policy().maintenance.webhooks)
        self.mqtt = chans[2]
        self.outbox = Outbox(ctx.store, ctx.clock, chans, notice_table=delivery.TABLE, on_result=self._delivered)
        self.service = Service(ctx.store, ctx.clock, ctx.policy, self._sender, self.outbox)
        self.deliveries = {(ch.name, r): 0 for ch in chans for r in ("done", "retry", "failed")}
        self._wake = asyncio.Event()
        self.page = PageServer(lambda addr: page.page_of(self.ctx.subscribers.view, addr, self.ctx.policy()))
        self._started = False
        self._fleet_next = None                 # the next end of a suspension adopted from the fleet
        self._fleet_seen = None                 # the decisions the timer last looked at (agent)

    def use_post(self, post: LetterPost) -> None:
        """app.py: letters use the notices' SMTP relay and follow fault contact changes (maintenance)."""
        self.post = post
        post.add_contact_listener(self)

    def set_notice_publisher(self, publisher: NoticePublisher) -> None:
        """app.py: letters to a contact's mqtt_topic go out through the MQTT bridge."""
        self.mqtt.publisher = publisher

    def mqtt_connected(self) -> None:
        """NoticeLinkListener: the bridge (re)connected; letters waiting for it are due now."""
        try:
            self.outbox.due_now(self.mqtt.name)
        except NocpolicyError as exc:
            log.error("suspension: MQTT letters after reconnect: %s", exc)

    def contacts_changed(self) -> None:
        """ContactListener: letters not yet delivered follow the customers' new fault contacts. Called
        from maintenance's commit, before the new policy is in force: run just after it (and not before
        start, which does it)."""
        if self._started:
            asyncio.get_running_loop().call_soon(self._retarget)

    def _retarget(self) -> None:
        try:
            with self.ctx.store.transaction() as db:
                moved = delivery.retarget_changed(db, self.outbox, self.ctx.clock.now())
        except NocpolicyError as exc:
            log.error("suspension: letters could not follow a new fault contact: %s", exc)
            return
        for customer, counts in moved.items():
            log.info("customer %s: new fault contact; undelivered letters moved to it (%s)", customer,
                     ", ".join(f"{k} {v}" for k, v in counts.items()))
        self.outbox.poke()

    def _delivered(self, channel, row: dict, result: str) -> None:
        key = (channel.name, "done" if result in ("sent", "delivered") else result)
        self.deliveries[key] = self.deliveries.get(key, 0) + 1

    def _sender(self) -> str:
        mailer = self.post.letter_mailer() if self.post else None
        return mailer.cfg.sender if mailer else "noc@localhost"

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        with self.ctx.store.transaction() as db:
            n = self.outbox.recover(db, self.ctx.clock.now())
        if n:
            log.warning("suspension: %d letter(s) were being sent when the daemon stopped; sending them again "
                        "with the same Message-ID", n)
        self._retarget()         # contacts changed while the daemon was stopped (or while a letter was queued)
        await self.tick()
        if self.ctx.options.role == "agent" and self.ctx.subscribers is not None:
            self.ctx.subscribers.watch(self._fleet_watch)     # an adopted suspension may bring an end
        self.tasks.supervise("timer", self._run)
        self.tasks.supervise("letters", self.outbox.run)
        await self.page.start(self.ctx.policy().suspension.notice_page)
        self._started = True
        await super().start()

    async def stop(self) -> None:
        await self.page.stop()
        await super().stop()

    # -- the notice page: a changed listen address takes effect at the reload ------------------------

    async def prepare(self, policy, change):
        """A new ``notice_page.listen`` is bound now (a failure refuses the reload); the commit swaps."""
        if not self._started or not await self.page.stage(policy.suspension.notice_page):
            return None
        return lambda: self.page.commit(self.tasks.spawn)

    async def abandon(self) -> None:
        await self.page.abandon()

    async def _run(self) -> None:
        retried = False
        while True:
            n = await self.tick()
            rows = await asyncio.to_thread(self.service.open_rows)
            when = min((t for t in (next_due(rows), self._fleet_next) if t is not None), default=None)
            delay = MAX_NAP if when is None else (when - self.ctx.clock.now()).total_seconds()
            if delay <= 0 and (n or not retried):     # became due meanwhile: at once (once more if none went)
                retried = n == 0
                continue
            retried = False
            await nap(self.ctx.clock, self._wake, min(MAX_NAP, max(MIN_NAP, delay)))

    def wake(self) -> None:
        self._wake.set()

    def _fleet_watch(self, view, change) -> None:
        if view.decisions is not self._fleet_seen:          # decisions changed, not just sessions
            self._fleet_seen = view.decisions
            self.wake()

    async def tick(self) -> int:
        """Apply every transition due now (start, end, terminable); returns how many."""
        n = 0
        for row, event in await asyncio.to_thread(self.service.due):
            try:
                new = await asyncio.to_thread(self.service.transition, row, event, "timer")
            except NocpolicyError as exc:
                log.error("suspension %d: %s failed: %s", row["id"], event, exc)
                continue
            await self.pushed(new, event)
            n += 1
        lifted, self._fleet_next = await fleetend.lift_ended(self.ctx)     # a fleet agent's adopted ones
        return n + lifted

    async def pushed(self, row: dict, event: str) -> dict | None:
        """Tell the subscribers area (and so every reader: DNS at once), then nftables (awaited), and
        the control plane what changed; returns what nftables said (None: nothing to enforce)."""
        nft = None
        if (event in ("start", "add") and row["state"] == "active") or event in ("end", "cancel"):
            value = decision_value(row) if row["state"] == "active" else None
            await self.ctx.subscribers.decide(Decision("suspension", row["customer"], value))
            if self.enforcer is not None:
                nft = await self.enforcer.enforce_suspensions()
        self.outbox.poke()
        self.ctx.events.publish("suspension", {"id": row["id"], "customer": row["customer"], "event": event,
                                               "state": row["state"], "mode": row["mode"], "cause": row["cause"],
                                               "terminable": bool(row["terminable"])})
        if event == "terminable":
            log.warning("customer %s: suspension %d unresolved: terminable under Art. 27(1) since %s",
                        row["customer"], row["id"], row["terminable_at"])
        self.wake()
        return nft

    def status(self) -> dict:
        d = super().status()
        try:
            with self.ctx.store.transaction() as db:
                d["suspensions"] = {r["state"]: r["n"] for r in db.execute(
                    "SELECT state, COUNT(*) AS n FROM sp_suspension GROUP BY state").fetchall()}
        except NocpolicyError:
            return d
        d["notice_page"] = self.page.where()
        return d

    # -- commands and metrics ----------------------------------------------------------------------

    def commands(self):
        return commands.build(self)

    def collectors(self) -> list:
        return [_Collector(self)]


class _Collector:
    """Counts by mode and state, terminable cases and letters, from the store at scrape time (no
    customer label: Art. 37)."""

    def __init__(self, comp: Suspensions):
        self.comp = comp

    def describe(self):
        return []

    def collect(self):
        with self.comp.ctx.store.transaction() as db:
            counts = {(r["mode"], r["state"]): r["n"] for r in db.execute(
                "SELECT mode, state, COUNT(*) AS n FROM sp_suspension GROUP BY mode, state").fetchall()}
            terminable = db.execute("SELECT COUNT(*) AS n FROM sp_suspension WHERE state='active' AND terminable=1"
                                    ).fetchone()["n"]
            notices = {(r["kind"], r["state"]): r["n"] for r in db.execute(
                "SELECT kind, state, COUNT(*) AS n FROM sp_notice GROUP BY kind, state").fetchall()}
            fleet = [r["value"] for r in db.execute("SELECT value FROM sp_fleet_suspension").fetchall()]
        g = GaugeMetricFamily("nocpolicy_suspensions", "Customer suspensions (Art. 25) by mode and state",
                              labels=["mode", "state"])
        for mode in MODES:
            for state in STATES:
                g.add_metric([mode, state], counts.get((mode, state), 0))
        yield g
        yield GaugeMetricFamily("nocpolicy_suspensions_terminable", "Active suspensions unresolved past the "
                                "Art. 27(1) period (the contract may be terminated)", value=terminable)
        yield _adopted_gauge(fleet)
        c = CounterMetricFamily("nocpolicy_suspension_letter_deliveries", "Delivery attempts of suspension, "
                                "termination and abolition letters by channel (email, webhook, mqtt) and result "
                                "(done, retry, failed)", labels=["channel", "result"])
        for (channel, result), v in sorted(self.comp.deliveries.items()):
            c.add_metric([channel, result], v)
        yield c
        n = GaugeMetricFamily("nocpolicy_suspension_notices", "Suspension, termination and abolition letters by "
                              "kind and delivery state", labels=["kind", "state"])
        for (kind, state), v in sorted(notices.items()):
            n.add_metric([kind, state], v)
        yield n



def _adopted_gauge(values: list[str]) -> GaugeMetricFamily:
    """A fleet agent's suspensions in force, adopted from the controller, by mode (no customer)."""
    modes = Counter(json.loads(v).get("mode") for v in values)
    g = GaugeMetricFamily("nocpolicy_suspensions_adopted", "Suspensions in force adopted from the fleet "
                          "controller (agents) by mode", labels=["mode"])
    for mode in MODES:
        g.add_metric([mode], modes.get(mode, 0))
    return g
