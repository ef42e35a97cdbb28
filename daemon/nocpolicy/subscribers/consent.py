"""Consent by purpose (Art. 45(1)(2)(4)(5)), persisted with who, when, channel and wording.

Every change is one row of ``consent_log`` (append-only: the evidence of what the customer
chose when, which the ICT-ISAC export reads "at the time of the record") and one audit
record, in the same transaction. The customer's runtime consents are the latest row per
purpose; a purpose never decided has its default (``model.PURPOSES``) or, for cc-blocking,
the policy's ``security_optout``. Opt-outs recorded before consent existed (``dns_optout``)
are carried over as cc-blocking rows by the first migration.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable

from ..store import Store
from .model import CONSENT, PURPOSES, Decisions
from .optouts import MIGRATIONS as OPTOUT_MIGRATIONS

CHANNELS = ("portal", "operator", "phone", "mqtt")
WORDING_MAX = 2000

MIGRATIONS = (
    """
    CREATE TABLE consent_log (
        id       INTEGER PRIMARY KEY,
        customer TEXT NOT NULL,
        purpose  TEXT NOT NULL,
        granted  INTEGER NOT NULL,
        channel  TEXT NOT NULL,
        actor    TEXT NOT NULL,
        wording  TEXT NOT NULL DEFAULT '',
        ts       TEXT NOT NULL
    );
    CREATE INDEX consent_log_customer ON consent_log(customer, purpose, id);
    INSERT INTO consent_log (customer, purpose, granted, channel, actor, wording, ts)
        SELECT customer, 'cc-blocking', 1 - optout, 'operator', actor, reason, ts FROM dns_optout;
    """,
)

_LATEST = ("SELECT l.* FROM consent_log l JOIN (SELECT MAX(id) AS id FROM consent_log GROUP BY customer, purpose) m "
           "ON l.id = m.id")


class ConsentStore:
    def __init__(self, store: Store, clock):
        self.store = store
        self.clock = clock
        store.migrate("dns.optout", OPTOUT_MIGRATIONS)      # an old state directory's opt-outs first
        store.migrate("subscribers.consent", MIGRATIONS)

    def latest(self, customer: str | None = None) -> dict[tuple[str, str], dict]:
        """(customer, purpose) -> the latest row (every customer, or one)."""
        sql, params = _LATEST, ()
        if customer is not None:
            sql, params = _LATEST + " WHERE l.customer = ?", (customer,)
        return {(r["customer"], r["purpose"]): dict(r) for r in self.store.all(sql, params)}

    def history(self, customers: Iterable[str]) -> dict[tuple[str, str], list[tuple[str, bool]]]:
        """(customer, purpose) -> [(ts, granted)] in order, for the customers given."""
        out: dict[tuple[str, str], list[tuple[str, bool]]] = {}
        ids = sorted(set(customers))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows = self.store.all(f"SELECT customer, purpose, granted, ts FROM consent_log WHERE customer IN "
                                  f"({','.join('?' * len(chunk))}) ORDER BY id", chunk)
            for r in rows:
                out.setdefault((r["customer"], r["purpose"]), []).append((r["ts"], bool(r["granted"])))
        return out

    def set(self, customer: str, purpose: str, granted: bool, *, channel: str, actor: str, wording: str,
            before: bool, action: str = "consent.set") -> dict:
        now = self.clock.now().isoformat()
        row = {"customer": customer, "purpose": purpose, "on": granted, "channel": channel, "actor": actor,
               "wording": wording, "ts": now}
        after = {"purpose": purpose, "on": granted, "channel": channel, "wording": wording}
        was = {"purpose": purpose, "on": before}
        if purpose == "cc-blocking":        # the opt-out's own words, as audit searches know them
            after["security_optout"], was["security_optout"] = not granted, not before
        with self.store.transaction() as tx:
            tx.execute("INSERT INTO consent_log (customer, purpose, granted, channel, actor, wording, ts) "
                       "VALUES (?,?,?,?,?,?,?)", (customer, purpose, int(granted), channel, actor, wording, now))
            self.store.audit(actor, action, f"customer:{customer}", was, after, db=tx)
        return row


def adopt_consents(store: Store, values: dict, *, purpose: str, actor: str, note: str, now: str) -> None:
    """Consents for ``purpose`` decided at the fleet controller (customer -> bool; None =
    withdrawn, the default applies again): one ``fleet`` row per change in ``consent_log`` and
    one audit record, in one transaction. The controller's log keeps the customer's own
    channel and wording; a withdrawal removes only the rows the fleet wrote here."""
    rows = [(cid, purpose, int(v), "fleet", actor, note[:WORDING_MAX], now) for cid, v in values.items()
            if v is not None]
    gone = [(cid, purpose) for cid, v in values.items() if v is None]
    with store.transaction() as tx:
        tx.executemany("INSERT INTO consent_log (customer, purpose, granted, channel, actor, wording, ts) "
                       "VALUES (?,?,?,?,?,?,?)", rows)
        tx.executemany("DELETE FROM consent_log WHERE customer=? AND purpose=? AND channel='fleet'", gone)
        store.audit(actor, "consent.adopt", f"fleet:{CONSENT}{purpose}", None,
                    {"set": {c: bool(v) for c, _p, v, *_ in rows[:100]}, "withdrawn": [c for c, _ in gone[:100]],
                     "count": len(values), "note": note}, db=tx)


def decisions_of(latest: dict[tuple[str, str], dict]) -> Decisions:
    """The runtime consent decisions in the store: ``consent:<purpose>`` per customer."""
    return Decisions({(CONSENT + purpose, cid): bool(r["granted"])
                      for (cid, purpose), r in latest.items() if purpose in PURPOSES})


def consented_at(history: list[tuple[str, bool]] | None, when: dt.datetime, default: bool) -> bool:
    """Was the purpose on at ``when``, given its change history [(iso ts, granted)] (pure)?"""
    if not history:
        return default
    stamp = when.astimezone(dt.UTC).isoformat()
    stamps = [_utc(ts) for ts, _ in history]
    i = bisect.bisect_right(stamps, stamp)
    return history[i - 1][1] if i else default


def _utc(ts: str) -> str:
    return dt.datetime.fromisoformat(ts).astimezone(dt.UTC).isoformat()
