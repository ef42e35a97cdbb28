"""Emergencies in the state store: declare, lift, expire; one active at a time, history kept.

An emergency lives in table ``qos_emergencies``; the active one has ``ended_at``
NULL. Its effective end is the earlier of ``--until`` and declared + the
profile's ``max_duration``. Every change writes an audit record (with the exact
rule lines added and removed) in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

MIGRATIONS = (
    """
    CREATE TABLE qos_emergencies (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        profile      TEXT NOT NULL,
        scope        TEXT NOT NULL,
        reason       TEXT NOT NULL,
        declared_by  TEXT NOT NULL,
        declared_at  TEXT NOT NULL,
        until        TEXT,
        ended_at     TEXT,
        ended_by     TEXT,
        end_reason   TEXT
    );
    CREATE INDEX qos_emergencies_active ON qos_emergencies(ended_at);
    """,
)


def ends_at(declared: dt.datetime, until: dt.datetime | None, max_duration: float | None) -> dt.datetime | None:
    """The earlier of ``until`` and declared + ``max_duration``. A max_duration that would
    run past the calendar (a profile from before the policy's ranges) counts as none."""
    limits = [t for t in (until,) if t is not None]
    if max_duration:
        try:
            limits.append(declared + dt.timedelta(seconds=max_duration))
        except OverflowError:
            pass
    return min(limits) if limits else None


@dataclass(frozen=True)
class Record:
    id: int
    profile: str
    scope: tuple[str, ...]
    reason: str
    declared_by: str
    declared_at: dt.datetime
    until: dt.datetime | None

    def ends_at(self, max_duration: float | None) -> dt.datetime | None:
        return ends_at(self.declared_at, self.until, max_duration)

    def as_dict(self, max_duration: float | None = None) -> dict:
        end = self.ends_at(max_duration)
        return {"id": self.id, "profile": self.profile, "scope": list(self.scope), "reason": self.reason,
                "declared_by": self.declared_by, "declared_at": self.declared_at.isoformat(),
                "until": self.until.isoformat() if self.until else None,
                "ends_at": end.isoformat() if end else None}


def _row(r) -> Record:
    return Record(r["id"], r["profile"], tuple(json.loads(r["scope"])), r["reason"], r["declared_by"],
                  dt.datetime.fromisoformat(r["declared_at"]),
                  dt.datetime.fromisoformat(r["until"]) if r["until"] else None)


class EmergencyStore:
    def __init__(self, store):
        self.store = store
        store.migrate("qos", MIGRATIONS)

    def active(self) -> Record | None:
        r = self.store.one("SELECT * FROM qos_emergencies WHERE ended_at IS NULL ORDER BY id DESC LIMIT 1")
        return _row(r) if r else None

    def history(self, limit: int = 20) -> list[dict]:
        rows = self.store.all("SELECT * FROM qos_emergencies ORDER BY id DESC LIMIT ?", (limit,))
        return [{**_row(r).as_dict(), "ended_at": r["ended_at"], "ended_by": r["ended_by"],
                 "end_reason": r["end_reason"]} for r in rows]

    def declare(self, *, profile: str, scope, reason: str, actor: str, now: dt.datetime,
                until: dt.datetime | None, audit_after: dict, audit_before: dict | None) -> Record:
        with self.store.transaction() as db:
            cur = db.execute("INSERT INTO qos_emergencies (profile, scope, reason, declared_by, declared_at, until) "
                             "VALUES (?,?,?,?,?,?)",
                             (profile, json.dumps(list(scope)), reason, actor, now.isoformat(),
                              until.isoformat() if until else None))
            rid = cur.lastrowid
            if audit_before is not None:   # a declare replacing an active emergency ends it
                db.execute("UPDATE qos_emergencies SET ended_at=?, ended_by=?, end_reason=? "
                           "WHERE ended_at IS NULL AND id<>?", (now.isoformat(), actor, "replaced", rid))
            self.store.audit(actor, "emergency.declare", f"emergency:{profile}", audit_before, audit_after, db=db)
        return self.active()

    def end(self, rec: Record, *, actor: str, reason: str, now: dt.datetime, action: str,
            audit_after: dict, audit_before: dict) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE qos_emergencies SET ended_at=?, ended_by=?, end_reason=? WHERE id=?",
                       (now.isoformat(), actor, reason, rec.id))
            self.store.audit(actor, action, f"emergency:{rec.profile}", audit_before, audit_after, db=db)
