"""Subscribers: the one owner of who a client is and what applies to it.

Takes in the policy's customers (at every commit) and runtime decisions (consent by
purpose, persisted in the state store with their audit), builds the immutable view with
the pure functions of view.py, and pushes every new view to its watchers (the DNS
engine, passive detection) -- nobody polls. In the main process a runtime decision is
persisted, applied here, sent to every replica (the DNS worker processes, which apply
it with :meth:`Subscribers.apply`, the same code) and only then acknowledged, so the
next query anywhere sees it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging

from prometheus_client.core import GaugeMetricFamily

from ..component import Component
from ..control.commands import Command
from ..errors import NotFound
from .api import Replica, Watcher
from .commands import ConsentCommands, describe_consent, not_found
from .consent import ConsentStore, adopt_consents, consented_at, decisions_of
from .live import AddressTable, ClientLookup, change_from_json, change_to_json
from .model import CONSENT, EVERYTHING, PURPOSES, Change, Decision, Decisions
from .prefixes import PrefixIndex
from .suspensions import SuspensionStore, adopt_suspensions, with_suspensions
from .view import SubscriberView, implicit_subscriber, reload_view, update_view

log = logging.getLogger(__name__)


class Subscribers(Component):
    name = "subscribers"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.consents = ConsentStore(ctx.store, ctx.clock)
        self._consent_lock = asyncio.Lock()         # one consent change at a time (read-modify-write)
        self.suspensions = SuspensionStore(ctx.store)
        self.view = SubscriberView()
        self.decisions: Decisions | None = None        # loaded from the store at the first prepare
        self._watchers: list[Watcher] = []
        self._replicas: list[Replica] = []
        # live sessions (sessions/): the Sessions component's table in the main process, a
        # replica fed over the pipe in a DNS worker
        self.live = AddressTable() if ctx.options.extra.get("dns_worker") else None
        self._live_loaded = False
        # how decisions adopted from the fleet controller are persisted, per kind (consent by
        # purpose, the suspensions in force: docs/mqtt.md)
        self._persisters = {CONSENT + p: functools.partial(adopt_consents, purpose=p) for p in PURPOSES}
        self._persisters["suspension"] = adopt_suspensions

    # -- the interface consumers are handed (api.SubscriberSource) ---------------------

    def watch(self, fn: Watcher) -> None:
        self._watchers.append(fn)
        fn(self.view, EVERYTHING)

    def replicate_to(self, fn: Replica) -> None:
        self._replicas.append(fn)

    def apply(self, d: Decision) -> None:
        """Apply a runtime decision to the view and push it (synchronous; no store write)."""
        if d.kind == "sessions":                  # a DNS worker: the main process's session changes
            changes = [change_from_json(x) for x in d.value]
            for c in changes:
                self.live.apply(c)
            self.sessions_changed(changes)
            return
        self.decisions = (self.decisions or Decisions()).changed(d.kind, {d.customer: d.value})
        self._publish(update_view(self.view, self.decisions, (d.customer,)), Change.of(d.customer))

    def _publish(self, view: SubscriberView, change: Change) -> None:
        self.view = view
        for fn in self._watchers:
            fn(view, change)

    async def decide(self, d: Decision) -> bool:
        """Apply a decision already persisted, here and in every replica; False if a replica
        did not confirm in time."""
        self.apply(d)
        results = await asyncio.gather(*(r(d) for r in self._replicas))
        return all(results)

    async def adopt(self, kind: str, values: dict, *, actor: str, note: str) -> bool:
        """Decisions made elsewhere (the fleet controller): customer -> value, None = withdrawn.
        Persisted in one transaction with one audit record, applied once, sent to every replica;
        False if a replica did not confirm in time."""
        persist = self._persisters.get(kind)
        if persist is None:
            raise NotFound(f"decisions of kind {kind!r} cannot be adopted here (known: "
                           f"{', '.join(self._persisters)})", field="kind")
        await asyncio.to_thread(persist, self.ctx.store, values, actor=actor, note=note,
                                now=self.ctx.clock.now().isoformat())
        self.decisions = (self.decisions or Decisions()).changed(kind, values)
        self._publish(update_view(self.view, self.decisions, values.keys()), Change(frozenset(values), False))
        sent = [r(Decision(kind, cid, v)) for cid, v in values.items() for r in self._replicas]
        return all(await asyncio.gather(*sent))

    # -- live sessions (sessions/component.SessionFeed) -----------------------------------

    def use_sessions(self, live) -> None:
        self.live = live
        self._publish(self._with_sessions(self.view), EVERYTHING)

    def _with_sessions(self, view: SubscriberView) -> SubscriberView:
        """``view`` whose address lookup covers the live sessions (static prefixes first). An
        implicit customer (known only from a session) has no subscriber of its own until a
        runtime decision names it: readers take ``implicit_subscriber`` for an id that is
        not in ``by_id`` (a million implicit customers cost nothing here)."""
        if self.live is None:
            return view
        static = getattr(view.prefixes, "static", view.prefixes)
        by_id = view.by_id
        for cid in view.decisions.customers():
            if cid not in by_id:
                by_id = by_id if by_id is not view.by_id else dict(by_id)
                by_id[cid] = implicit_subscriber(cid, view.decisions)
        return dataclasses.replace(view, by_id=by_id, prefixes=ClientLookup(static, self.live))

    def static_owner(self, host: str) -> str | None:
        prefixes = self.view.prefixes
        return getattr(prefixes, "static", prefixes).lookup(host)

    def static_owner_net(self, family: int, value: int) -> str | None:
        """:meth:`static_owner` of an address given as (4 | 6, int): the session book's check."""
        prefixes = self.view.prefixes
        index = getattr(prefixes, "static", prefixes)
        if isinstance(index, PrefixIndex):
            return index.lookup_int(family, value)
        return index.lookup(str(ipaddress.ip_address(value if family == 4 else value.to_bytes(16, "big"))))

    def session_holds(self, host: str) -> bool:
        """Is ``host`` inside a live session (the DNS access list's hook)?"""
        return self.live is not None and self.live.contains(host)

    def sessions_changed(self, changes) -> None:
        """Sessions started or ended (already in the live lookup): every watcher is told, so
        the next query anywhere in this process sees it."""
        changes = tuple(changes)
        touched = frozenset(cid for _op, _addrs, cid, _implicit in changes if cid is not None)
        self._publish(self.view, Change(touched, True, changes))

    async def replicate_sessions(self, changes) -> bool:
        if not self._replicas:        # no DNS worker processes: nothing to encode (was ~5% of ingest)
            return True
        d = Decision("sessions", "*", [change_to_json(c) for c in changes])
        return all(await asyncio.gather(*(r(d) for r in self._replicas)))

    # -- lifecycle -------------------------------------------------------------------

    async def prepare(self, policy, change):
        decisions = self.decisions
        if decisions is None:
            decisions = decisions_of(await asyncio.to_thread(self.consents.latest))
            decisions = with_suspensions(decisions, await asyncio.to_thread(self.suspensions.active_decisions))
        if isinstance(self.live, AddressTable) and not self._live_loaded:    # a worker starting
            n = await asyncio.to_thread(self.live.load, self.ctx.store.path)
            self._live_loaded = True
            log.info("%d live session(s) loaded", n)
        view = await asyncio.to_thread(reload_view, self.view, policy.customers, policy.dns.unknown_clients,
                                       decisions)

        def commit():
            new = view
            if self.decisions is not None and self.decisions is not decisions:   # decided meanwhile
                new = update_view(view, self.decisions, view.customers)
            self.decisions = new.decisions
            self._publish(self._with_sessions(new), EVERYTHING)
        return commit

    # -- commands and metrics ------------------------------------------------------------

    def commands(self) -> list[Command]:
        return ConsentCommands(self).commands()

    def collectors(self) -> list:
        return [OptoutCollector(self)]

    def _subscriber(self, cid: str):
        sub = self.view.get(cid) if cid is not None else None
        if sub is None and cid is not None and self.live is not None and self.live.has_customer(cid):
            sub = implicit_subscriber(cid, self.view.decisions)      # an implicit customer
        if sub is None:
            raise not_found(cid)
        return sub

    # -- consent (the one way a consent changes: commands, the customer page) ----------------

    async def consent_of(self, cid: str) -> dict:
        sub = self._subscriber(cid)
        latest = await asyncio.to_thread(self.consents.latest, cid)
        return describe_consent(sub, latest, self.view.customers.get(cid))

    def consent_at(self, pairs, purpose: str):
        """A pure ``consent_at(customer, time) -> bool`` for ``purpose`` over the consent
        history of the customers in ``pairs`` (read now: blocking, run it in a thread)."""
        history = self.consents.history(pairs)
        default = PURPOSES[purpose]

        def at(cid: str, when) -> bool:
            return consented_at(history.get((cid, purpose)), when, default)
        return at

    async def set_consent(self, cid: str, purpose: str, on: bool, *, actor: str, channel: str, wording: str,
                          action: str = "consent.set") -> dict:
        """Persist (with its audit record), apply here and in every replica, then return: the
        very next query or record sees it."""
        async with self._consent_lock:            # the audit's "before" is the value just replaced
            before = self._subscriber(cid).consents(purpose)
            rec = await asyncio.to_thread(self.consents.set, cid, purpose, on, channel=channel, actor=actor,
                                          wording=wording, before=before, action=action)
            confirmed = await self.decide(Decision(CONSENT + purpose, cid, on))
        log.info("customer %s consent %s %s by %s (%s)", cid, purpose, "ON" if on else "OFF", actor, channel)
        return {**rec, "before": before, "changed": before != on, "replicas_confirmed": confirmed}


class OptoutCollector:
    def __init__(self, subscribers: Subscribers):
        self.subscribers = subscribers

    def describe(self):
        return []

    def collect(self):
        o = GaugeMetricFamily("nocpolicy_optout_customers", "Customers opted out of the security lists")
        o.add_metric([], len(self.subscribers.view.optouts))
        yield o
