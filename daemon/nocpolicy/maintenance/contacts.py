"""Fault contacts (障害時連絡先, Art. 24(3)(4)) with their change history.

The contact in the policy is a customer's version 1; ``contact set`` (or a changed
policy contact) appends a new version. Notices always go to the newest version
and record which version that was.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..policy.customers import Contact


@dataclass(frozen=True)
class ContactVersion:
    customer: str
    version: int
    email: str | None
    webhook: str | None
    mqtt_topic: str | None
    language: str
    source: str
    actor: str
    reason: str
    ts: str

    def contact(self) -> Contact:
        return Contact(self.email, self.webhook, self.mqtt_topic, self.language)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("customer", "version", "email", "webhook", "mqtt_topic",
                                              "language", "source", "actor", "reason", "ts")}


def _cv(r) -> ContactVersion:
    return ContactVersion(r["customer"], r["version"], r["email"], r["webhook"], r["mqtt_topic"],
                          r["language"], r["source"], r["actor"], r["reason"], r["ts"])


def current(db, customer: str) -> ContactVersion | None:
    r = db.execute("SELECT * FROM mw_contact WHERE customer=? ORDER BY version DESC LIMIT 1",
                   (customer,)).fetchone()
    return _cv(r) if r else None


def history(db, customer: str) -> list[ContactVersion]:
    return [_cv(r) for r in db.execute("SELECT * FROM mw_contact WHERE customer=? ORDER BY version",
                                       (customer,)).fetchall()]


def add_version(db, customer: str, contact: Contact, *, source: str, actor: str, reason: str,
                now: dt.datetime) -> ContactVersion:
    last = current(db, customer)
    version = (last.version if last else 0) + 1
    db.execute("INSERT INTO mw_contact (customer, version, email, webhook, mqtt_topic, language, source, actor,"
               " reason, ts) VALUES (?,?,?,?,?,?,?,?,?,?)",
               (customer, version, contact.email, contact.webhook, contact.mqtt_topic, contact.language,
                source, actor, reason, now.isoformat()))
    return current(db, customer)


def sync_policy(db, customers, now: dt.datetime) -> list[ContactVersion]:
    """Record each policy contact that differs from the last policy-sourced version (first one is v1)."""
    added = []
    for c in customers:
        last_policy = db.execute("SELECT * FROM mw_contact WHERE customer=? AND source='policy' "
                                 "ORDER BY version DESC LIMIT 1", (c.id,)).fetchone()
        if last_policy is not None and _cv(last_policy).contact() == c.contact:
            continue
        added.append(add_version(db, c.id, c.contact, source="policy", actor="policy",
                                 reason="contact in the policy", now=now))
    return added
