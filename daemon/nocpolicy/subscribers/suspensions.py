"""Suspension records (Art. 25, 27): the persisted rows behind the ``suspension`` decisions.

The subscribers area owns the table, so every process that builds a view (the main process
and each DNS worker) restores the active suspensions from the store when it starts; the
``suspension`` area (commands, timing, notices) writes through :class:`SuspensionStore`.
A row is ``scheduled`` (notice sent, not started), ``active`` (enforced), ``ended``
(resumed or its end passed) or ``terminated`` (Art. 27: the contract ended).
"""

from __future__ import annotations

import json
from typing import Any

from ..store import Store
from .model import Decisions

MIGRATIONS = (
    """
    CREATE TABLE sp_suspension (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        customer       TEXT NOT NULL,
        cause          TEXT NOT NULL,
        mode           TEXT NOT NULL,
        reason         TEXT NOT NULL,
        start          TEXT NOT NULL,              -- ISO 8601 UTC
        end            TEXT,                       -- NULL: until resumed
        rate           INTEGER,                    -- throttle: bit/s
        urgent         INTEGER NOT NULL DEFAULT 0,
        justification  TEXT NOT NULL DEFAULT '',
        state          TEXT NOT NULL,              -- scheduled | active | ended | terminated
        terminable_at  TEXT NOT NULL,              -- Art. 27(1): when it may be terminated if unresolved
        terminable     INTEGER NOT NULL DEFAULT 0, -- the terminable event was raised
        created        TEXT NOT NULL,
        actor          TEXT NOT NULL,
        ended_at       TEXT,
        end_reason     TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sp_suspension_customer ON sp_suspension(customer, state);
    CREATE TABLE sp_impact (
        suspension_id  INTEGER PRIMARY KEY REFERENCES sp_suspension(id),
        customer       TEXT NOT NULL,
        mode           TEXT NOT NULL,
        start          TEXT NOT NULL,
        end            TEXT,
        seconds        REAL
    );
    """,
)

OPEN_STATES = ("scheduled", "active")
COLUMNS = ("customer", "cause", "mode", "reason", "start", "end", "rate", "urgent", "justification", "state",
           "terminable_at", "created", "actor")


def decision_value(row: dict) -> dict:
    """The ``suspension`` decision value of an active row (subscribers.model.Suspended JSON)."""
    return {"id": row["id"], "mode": row["mode"], "cause": row["cause"], "reason": row["reason"],
            "start": row["start"], "end": row["end"], "rate": row["rate"]}


class SuspensionStore:
    def __init__(self, store: Store):
        self.store = store
        store.migrate("subscribers.suspension", MIGRATIONS)

    def active_decisions(self) -> dict[str, dict]:
        rows = self.store.all("SELECT * FROM sp_suspension WHERE state='active'")
        return {r["customer"]: decision_value(dict(r)) for r in rows}

    def rows(self, db, *, customer: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
        sql, params = "SELECT * FROM sp_suspension WHERE 1=1", []
        if customer is not None:
            sql += " AND customer=?"
            params.append(customer)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += list(states)
        return [dict(r) for r in db.execute(sql + " ORDER BY id", params).fetchall()]

    def get(self, db, sid: int) -> dict | None:
        r = db.execute("SELECT * FROM sp_suspension WHERE id=?", (sid,)).fetchone()
        return dict(r) if r else None

    def insert(self, db, values: dict[str, Any]) -> int:
        cols = [c for c in COLUMNS if c in values]
        cur = db.execute(f"INSERT INTO sp_suspension ({', '.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                         [values[c] for c in cols])
        return int(cur.lastrowid)

    def update(self, db, sid: int, **values: Any) -> None:
        sets = ", ".join(f"{k}=?" for k in values)
        db.execute(f"UPDATE sp_suspension SET {sets} WHERE id=?", (*values.values(), sid))

    def impact_start(self, db, row: dict, when: str) -> None:
        db.execute("INSERT OR IGNORE INTO sp_impact (suspension_id, customer, mode, start) VALUES (?,?,?,?)",
                   (row["id"], row["customer"], row["mode"], when))

    def impact_end(self, db, sid: int, when: str, seconds: float) -> None:
        db.execute("UPDATE sp_impact SET end=?, seconds=? WHERE suspension_id=? AND end IS NULL",
                   (when, seconds, sid))

    def impacts(self, db, customer: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM sp_impact", ()
        if customer is not None:
            sql, params = sql + " WHERE customer=?", (customer,)
        return [dict(r) for r in db.execute(sql + " ORDER BY suspension_id", params).fetchall()]


def with_suspensions(decisions: Decisions, active: dict[str, dict]) -> Decisions:
    """``decisions`` plus the active suspensions' (from the store)."""
    items = dict(decisions._items)
    for cid, value in active.items():
        items[("suspension", cid)] = value
    return Decisions(items)


def dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True)
