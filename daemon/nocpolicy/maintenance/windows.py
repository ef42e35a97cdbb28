"""Window records in the state store, and per-customer impact records (Art. 28(2))."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from dataclasses import dataclass

from ..policy.maintenance import Scope, Window
from .lifecycle import Timing
from .scope import scope_from_dict, scope_to_dict


@dataclass(frozen=True)
class WindowRecord:
    id: str
    source: str
    kind: str
    start: dt.datetime
    end: dt.datetime
    reason_ja: str
    reason_en: str
    impact: str
    scope: Scope
    urgent: bool
    justification: str
    state: str
    sequence: int = 0
    reminded: bool = False
    deadline: dict | None = None
    created: str = ""
    updated: str = ""
    actor: str = ""

    def timing(self) -> Timing:
        return Timing(self.state, self.start, self.end, self.reminded)

    def replace(self, **kw) -> WindowRecord:
        return dataclasses.replace(self, **kw)

    def as_dict(self, tz: str | None = None) -> dict:
        d = {"id": self.id, "source": self.source, "kind": self.kind, "start": self.start.isoformat(),
             "end": self.end.isoformat(), "reason": {"ja": self.reason_ja, "en": self.reason_en},
             "impact": self.impact, "scope": scope_to_dict(self.scope), "urgent": self.urgent,
             "justification": self.justification, "state": self.state, "sequence": self.sequence,
             "reminded": self.reminded, "deadline": self.deadline, "created": self.created,
             "updated": self.updated, "actor": self.actor}
        if tz:
            from zoneinfo import ZoneInfo
            d["start_local"] = self.start.astimezone(ZoneInfo(tz)).isoformat()
            d["end_local"] = self.end.astimezone(ZoneInfo(tz)).isoformat()
        return d


def from_policy(w: Window) -> WindowRecord:
    return WindowRecord(id=w.id, source="policy", kind=w.kind, start=w.start.astimezone(dt.UTC),
                        end=w.end.astimezone(dt.UTC), reason_ja=w.reason_ja, reason_en=w.reason_en,
                        impact=w.impact, scope=w.scope, urgent=w.urgent,
                        justification=w.urgent_justification, state="scheduled")


def same_content(a: WindowRecord, b: WindowRecord) -> bool:
    keys = ("kind", "start", "end", "reason_ja", "reason_en", "impact", "scope", "urgent", "justification")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def _row(r: sqlite3.Row) -> WindowRecord:
    return WindowRecord(
        id=r["id"], source=r["source"], kind=r["kind"], start=dt.datetime.fromisoformat(r["start"]),
        end=dt.datetime.fromisoformat(r["end"]), reason_ja=r["reason_ja"], reason_en=r["reason_en"],
        impact=r["impact"], scope=scope_from_dict(json.loads(r["scope"])), urgent=bool(r["urgent"]),
        justification=r["justification"], state=r["state"], sequence=r["sequence"],
        reminded=bool(r["reminded"]), deadline=json.loads(r["deadline"]) if r["deadline"] else None,
        created=r["created"], updated=r["updated"], actor=r["actor"])


def load_all(db) -> dict[str, WindowRecord]:
    return {r["id"]: _row(r) for r in db.execute("SELECT * FROM mw_window ORDER BY start, id").fetchall()}


def load(db, window_id: str) -> WindowRecord | None:
    r = db.execute("SELECT * FROM mw_window WHERE id=?", (window_id,)).fetchone()
    return _row(r) if r else None


def save(db, w: WindowRecord, now: dt.datetime) -> WindowRecord:
    """Insert or replace the record (inside the caller's transaction)."""
    w = w.replace(updated=now.isoformat(), created=w.created or now.isoformat())
    db.execute(
        """INSERT INTO mw_window (id, source, kind, start, end, reason_ja, reason_en, impact, scope, urgent,
               justification, state, sequence, reminded, deadline, created, updated, actor)
           VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
           ON CONFLICT(id) DO UPDATE SET source=excluded.source, kind=excluded.kind, start=excluded.start,
               end=excluded.end, reason_ja=excluded.reason_ja, reason_en=excluded.reason_en,
               impact=excluded.impact, scope=excluded.scope, urgent=excluded.urgent,
               justification=excluded.justification, state=excluded.state, sequence=excluded.sequence,
               reminded=excluded.reminded, deadline=excluded.deadline, updated=excluded.updated,
               actor=excluded.actor""",
        (w.id, w.source, w.kind, w.start.astimezone(dt.UTC).isoformat(), w.end.astimezone(dt.UTC).isoformat(),
         w.reason_ja, w.reason_en, w.impact, json.dumps(scope_to_dict(w.scope)), int(w.urgent),
         w.justification, w.state, w.sequence, int(w.reminded),
         json.dumps(w.deadline) if w.deadline else None, w.created, w.updated, w.actor))
    return w


# -- impact records (Art. 28(2): what was suspended, when, for how long) -------------------------

def impact_open(db, window_id: str, customers, when: dt.datetime, impact: str) -> None:
    db.executemany("INSERT OR IGNORE INTO mw_impact (window_id, customer, start, impact) VALUES (?,?,?,?)",
                   [(window_id, c, when.isoformat(), impact) for c in customers])


def impact_close(db, window_id: str, when: dt.datetime) -> None:
    for r in db.execute("SELECT customer, start FROM mw_impact WHERE window_id=? AND end IS NULL",
                        (window_id,)).fetchall():
        secs = max(0.0, (when - dt.datetime.fromisoformat(r["start"])).total_seconds())
        db.execute("UPDATE mw_impact SET end=?, seconds=? WHERE window_id=? AND customer=?",
                   (when.isoformat(), secs, window_id, r["customer"]))


def impacts(db, window_id: str) -> list[dict]:
    return [dict(r) for r in db.execute("SELECT * FROM mw_impact WHERE window_id=? ORDER BY customer",
                                        (window_id,)).fetchall()]
