"""Suspension records (Art. 25, 27): the persisted rows behind the ``suspension`` decisions.

The subscribers area owns the table, so every process that builds a view (the main process
and each DNS worker) restores the active suspensions from the store when it starts; the
``suspension`` area (commands, timing, notices) writes through :class:`SuspensionStore`.
A row is ``scheduled`` (notice sent, not started), ``active`` (enforced), ``ended``
(resumed or its end passed) or ``terminated`` (Art. 27: the contract ended).

On a fleet agent the suspensions are the controller's (fleet kind ``suspension``): what the
agent adopts is kept in ``sp_fleet_suspension`` (one row per customer: the value in force),
not among its own rows, so no timer or letter of this node ever acts on them; they are
restored with the node's own at every start, before it serves.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from ..store import Store
from .model import CAUSES, MODES, Decisions, _as_rate

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
    """
    CREATE TABLE sp_fleet_suspension (
        customer  TEXT PRIMARY KEY,
        value     TEXT NOT NULL,                   -- the decision value (decision_value JSON)
        actor     TEXT NOT NULL,                   -- mqtt:<controller>
        note      TEXT NOT NULL DEFAULT '',        -- fleet suspension version N
        ts        TEXT NOT NULL
    );
    """,
)

MAX_REASON = 500         # characters: shown in letters, on the page and (cut to 200 bytes) in DNS EDE text
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
        """customer -> the suspension in force: this node's active rows (and terminated ones: the
        restriction stays after termination, docs/suspension.md), then those adopted from the
        fleet controller (which win: on an agent the controller decides)."""
        rows = self.store.all("SELECT * FROM sp_suspension WHERE state IN ('active', 'terminated') ORDER BY id")
        out = {r["customer"]: decision_value(dict(r)) for r in rows}
        for r in self.store.all("SELECT customer, value FROM sp_fleet_suspension"):
            out[r["customer"]] = json.loads(r["value"])
        return out

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


def adopt_suspensions(store: Store, values: dict, *, actor: str, note: str, now: str) -> None:
    """Suspensions in force decided at the fleet controller (customer -> decision value; None =
    lifted): kept in ``sp_fleet_suspension`` with one audit record, in one transaction."""
    rows = [(cid, json.dumps(v, sort_keys=True), actor, note[:MAX_REASON], now) for cid, v in values.items()
            if v is not None]
    gone = [(cid,) for cid, v in values.items() if v is None]
    with store.transaction() as tx:
        tx.executemany("INSERT OR REPLACE INTO sp_fleet_suspension (customer, value, actor, note, ts) "
                       "VALUES (?,?,?,?,?)", rows)
        tx.executemany("DELETE FROM sp_fleet_suspension WHERE customer=?", gone)
        store.audit(actor, "suspension.adopt", "fleet:suspension", None,
                    {"set": {c: json.loads(v) for c, v, *_ in rows[:100]}, "lifted": [c for c, in gone[:100]],
                     "count": len(values), "note": note}, db=tx)


def adopted(store: Store) -> list[dict]:
    """The suspensions adopted from the fleet controller (an agent's ``suspensions`` listing)."""
    return [{**json.loads(r["value"]), "customer": r["customer"], "actor": r["actor"], "adopted": r["ts"],
             "note": r["note"]}
            for r in store.all("SELECT * FROM sp_fleet_suspension ORDER BY customer")]


FLEET_FIELDS = {"id", "mode", "cause", "reason", "start", "end", "rate"}


def check_fleet_value(v: Any) -> dict | None:
    """A suspension in force as the fleet controller publishes it (decision_value), checked whole
    before an agent adopts it: raises ValueError naming the field (pure)."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ValueError(f"must be an object or null, not {type(v).__name__}")
    extra = sorted(set(v) - FLEET_FIELDS)
    if extra:
        raise ValueError(f"{extra[0]}: unknown field (known: {', '.join(sorted(FLEET_FIELDS))})")
    if not isinstance(v.get("id"), int) or isinstance(v.get("id"), bool) or v["id"] < 1:
        raise ValueError(f"id: must be a positive integer, not {v.get('id')!r}")
    for field, known in (("mode", MODES), ("cause", CAUSES)):
        if v.get(field) not in known:
            raise ValueError(f"{field}: must be one of {', '.join(known)}, not {v.get(field)!r}")
    if not isinstance(v.get("reason"), str) or not v["reason"].strip() or len(v["reason"]) > MAX_REASON:
        raise ValueError(f"reason: must be a text of 1..{MAX_REASON} characters")
    _iso(v, "start")
    if v.get("end") is not None:
        _iso(v, "end")
    try:
        _as_rate(v.get("rate"))
    except ValueError as exc:
        raise ValueError(f"rate: {exc}") from None
    if v["mode"] == "throttle" and v.get("rate") is None:
        raise ValueError("rate: a throttle suspension needs a rate")
    return dict(v)


def _iso(v: Mapping, field: str) -> None:
    try:
        t = dt.datetime.fromisoformat(v.get(field))
    except (TypeError, ValueError):
        raise ValueError(f"{field}: must be an ISO 8601 time, not {v.get(field)!r}") from None
    if t.tzinfo is None:
        raise ValueError(f"{field}: must carry a UTC offset, not {v.get(field)!r}")


def with_suspensions(decisions: Decisions, active: dict[str, dict]) -> Decisions:
    """``decisions`` plus the active suspensions' (from the store)."""
    items = dict(decisions._items)
    for cid, value in active.items():
        items[("suspension", cid)] = value
    return Decisions(items)


def dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True)
