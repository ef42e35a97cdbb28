"""Suspension changes in one transaction each: the row, its audit record, its impact record and
the letter that announces it (the I/O shell around rules.py; the caller pushes the decision)."""

from __future__ import annotations

import datetime as dt
import logging

from ..errors import Conflict, NotFound
from ..maintenance import contacts
from ..subscribers.suspensions import OPEN_STATES, SuspensionStore, decision_value
from . import delivery, letters
from .rules import Request, check_request, due_event, overlaps, terminable_at

log = logging.getLogger(__name__)


class Service:
    """``policy()`` is the policy in force; ``sender()`` the e-mail sender (Message-IDs); ``outbox``
    the letters' delivery loop (its channels say which contacts they reach)."""

    def __init__(self, store, clock, policy, sender, outbox):
        self.store, self.clock, self.policy, self.sender, self.outbox = store, clock, policy, sender, outbox
        self.rows = SuspensionStore(store)
        store.migrate("suspension", letters.MIGRATIONS)

    # -- reading -----------------------------------------------------------------------------------

    def open_rows(self, customer: str | None = None) -> list[dict]:
        with self.store.transaction() as db:
            return self.rows.rows(db, customer=customer, states=OPEN_STATES)

    def has_contact(self, customer: str) -> bool:
        with self.store.transaction() as db:
            c = contacts.current(db, customer) if _has_table(db, "mw_contact") else None
        return c is not None and any(ch.target(c) for ch in self.outbox.channels)

    # -- changes -----------------------------------------------------------------------------------

    def suspend(self, r: Request, sub, actor: str, *, notices: bool) -> dict:
        """Record a suspension (scheduled, or active when it starts now) and queue its notice."""
        now = self.clock.now()
        plan = self.policy().plans_by_id.get(sub.plan) if sub.plan else None
        start = check_request(r, now, plan.down if plan else None, plan.up if plan else None,
                              notices and self.has_contact(r.customer))
        clash = overlaps(start, r.end, self.open_rows(r.customer))
        if clash is not None:
            raise Conflict(f"customer {r.customer} already has suspension {clash['id']} ({clash['state']}, from "
                           f"{clash['start']} until {clash['end'] or 'resumed'}) overlapping this period",
                           field="from")
        s = self.policy().suspension
        values = {"customer": r.customer, "cause": r.cause, "mode": r.mode, "reason": r.reason,
                  "start": start.astimezone(dt.UTC).isoformat(),
                  "end": r.end.astimezone(dt.UTC).isoformat() if r.end else None, "rate": r.rate,
                  "urgent": int(r.urgent), "justification": r.justification,
                  "state": "active" if start <= now else "scheduled",
                  "terminable_at": terminable_at(r.cause, start, s.terminable_months,
                                                 self.policy().settings.timezone).astimezone(dt.UTC).isoformat(),
                  "created": now.isoformat(), "actor": actor}
        with self.store.transaction() as db:
            sid = self.rows.insert(db, values)
            row = self.rows.get(db, sid)
            if row["state"] == "active":
                self.rows.impact_start(db, row, now.isoformat())
            self.store.audit(actor, "suspension.add", f"customer:{r.customer}", None, _public(row), db=db)
            self._letter(db, row, "notice", now)
        log.info("customer %s: suspension %d (%s, %s) %s by %s", r.customer, sid, r.mode, r.cause, row["state"],
                 actor)
        return row

    def transition(self, row: dict, event: str, actor: str, reason: str = "") -> dict:
        """Apply ``event`` (start | end | cancel | terminable | terminate) to ``row``; returns the new row."""
        now = self.clock.now()
        with self.store.transaction() as db:
            cur = self.rows.get(db, row["id"])
            if event == "start":
                self.rows.update(db, cur["id"], state="active")
                self.rows.impact_start(db, cur, now.isoformat())
                self._letter(db, cur, "started", now)
            elif event in ("end", "cancel"):
                self.rows.update(db, cur["id"], state="ended", ended_at=now.isoformat(), end_reason=reason)
                started = dt.datetime.fromisoformat(cur["start"])
                self.rows.impact_end(db, cur["id"], now.isoformat(), max(0.0, (now - started).total_seconds()))
                self._letter(db, cur, "ended" if event == "end" else "cancelled", now)
            elif event == "terminable":
                self.rows.update(db, cur["id"], terminable=1)
            elif event == "terminate":
                self._letter(db, cur, "terminated", now)       # the Art. 27(2) notice first
                self.rows.update(db, cur["id"], state="terminated", ended_at=now.isoformat(), end_reason=reason)
            new = self.rows.get(db, cur["id"])
            self.store.audit(actor, f"suspension.{event}", f"customer:{cur['customer']}", _public(cur),
                             {**_public(new), "reason": reason}, db=db)
        return new

    def due(self) -> list[tuple[dict, str]]:
        now = self.clock.now()
        return [(row, ev) for row in self.open_rows() if (ev := due_event(row, now)) is not None]

    def the_open(self, customer: str, states: tuple[str, ...] = OPEN_STATES) -> dict:
        rows = [r for r in self.open_rows(customer) if r["state"] in states]
        if not rows:
            raise NotFound(f"customer {customer} has no {' or '.join(states)} suspension", field="customer")
        return rows[0]

    def _letter(self, db, row: dict, kind: str, now: dt.datetime) -> None:
        p = self.policy()
        cust = p.customers_by_id.get(row["customer"])
        contact = contacts.current(db, row["customer"]) if _has_table(db, "mw_contact") else None
        ja, en = letters.suspension_lines(kind, row, p.suspension, p.settings.timezone)
        facts = {k: row[k] for k in ("cause", "mode", "reason", "start", "end", "rate", "urgent")}
        letter = letters.Letter(f"susp-{row['id']}", row["customer"], cust.name if cust else row["customer"], kind,
                                letters.languages(contact.language if contact else None), ja, en,
                                p.suspension.provider, {"suspension": row["id"], **facts})
        delivery.enqueue(db, letter, contact, self.sender(), now, self.outbox)


def _public(row: dict) -> dict:
    return {k: row[k] for k in ("id", "state", "mode", "cause", "reason", "start", "end", "rate", "urgent",
                                "justification", "terminable_at", "terminable")}


def _has_table(db, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


__all__ = ["Service", "decision_value"]
