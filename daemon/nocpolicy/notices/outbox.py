"""One outbox loop for every notice channel (e-mail, webhook, MQTT; later letters or SMS).

A notice is a row in its source's notice table (for maintenance: ``mw_outbox``,
which also carries the e-mail delivery). Each channel keeps one delivery row per
notice in its ``Table`` and implements only "deliver one row" (``Channel.session``
yields a ``deliver(row) -> Attempt``). This module owns, for all channels alike:
due times, attempts, the backoff, ``MAX_ATTEMPTS``, superseding, retargeting to a
new fault contact and crash recovery.

Exactly-once channels (``exactly_once = True``, e-mail) have each row claimed
``sending`` (committed) before it is handed over; the attempt is counted when its
result is recorded. A crash leaves the row ``sending``; ``recover`` counts that
interrupted attempt and sends it again. At-least-once channels (webhook,
MQTT) record the attempt after it; a crash repeats it with the same message id.

Enqueueing a notice for a customer's fault contact: the source writes its notice
row, then ``Outbox.enqueue(db, notice_id, contact, now)`` adds one row in every
channel the contact has a target for (``Channel.target(contact)``). One ``Outbox``
serves one notice table (superseding and retargeting select ids of that table):
each notice source (maintenance, suspension letters, advisory alerts) runs its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..clock import nap
from ..errors import NocpolicyError

log = logging.getLogger(__name__)

BACKOFF_BASE = 30.0        # seconds before the first retry
BACKOFF_CAP = 3600.0       # never wait longer than this between attempts
MAX_ATTEMPTS = 10          # then the row is failed and shown to the operator
BATCH = 50                 # rows per channel per round
MAX_NAP = 60.0             # look again at least this often (wall-clock jumps, missed pokes)
MIN_NAP = 0.2              # never spin


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 -> 30 s, 2 -> 60 s, ... capped at 1 h)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Attempt:
    """The result of delivering one row: ok; else temporary (retry with backoff) or not (failed now)."""
    ok: bool
    temporary: bool = True
    error: str = ""
    columns: dict[str, Any] = field(default_factory=dict)   # channel columns to store (status, result...)


@dataclass(frozen=True)
class Table:
    """Where a channel's delivery rows live: ``key`` is the notice id, ``target`` the address column."""
    name: str
    key: str
    target: str
    done: str                 # the state of a delivered row (sent | delivered)
    done_at: str              # its timestamp column
    select: str               # SELECT returning the row plus the notice's ``payload`` and ``kind``; ends in WHERE

    def row(self, db, key: int) -> dict | None:
        r = db.execute(f"{self.select} {self.name}.{self.key}=?", (key,)).fetchone()
        return dict(r) if r else None

    def due(self, db, now: dt.datetime, limit: int) -> list[dict]:
        return [dict(r) for r in db.execute(
            f"{self.select} {self.name}.state='pending' AND {self.name}.next_attempt<=? "
            f"ORDER BY {self.name}.{self.key} LIMIT ?", (now.isoformat(), limit)).fetchall()]

    def next_due(self, db) -> dt.datetime | None:
        r = db.execute(f"SELECT MIN(next_attempt) AS t FROM {self.name} WHERE state='pending'").fetchone()
        return dt.datetime.fromisoformat(r["t"]) if r and r["t"] else None


DeliverOne = Callable[[dict], Awaitable[Attempt]]


class Channel(Protocol):
    name: str
    table: Table
    exactly_once: bool

    def ready(self) -> bool:
        """False: rows wait untouched (e.g. no SMTP server configured)."""
        ...

    def target(self, contact) -> str | None:
        """Where this contact wants notices on this channel (None: not on this channel)."""
        ...

    def session(self) -> AbstractAsyncContextManager[DeliverOne]:
        """Open the channel for one batch; yields "deliver one row"."""
        ...

    def add(self, db, notice_id: int, target: str, now: dt.datetime) -> bool:
        """A pending row for this notice (False if it has one already)."""
        ...

    def retarget(self, db, notices_sql: str, undelivered_sql: str, params: tuple, target: str, contact,
                 now: dt.datetime) -> int:
        """Move these notices' undelivered rows to ``target``; returns how many rows now go there."""
        ...


class RowChannel:
    """The common part of channels with their own delivery table keyed by the notice id."""

    name: str
    table: Table
    exactly_once = False

    def ready(self) -> bool:
        return True

    def add(self, db, notice_id: int, target: str, now: dt.datetime) -> bool:
        t = self.table
        return db.execute(f"INSERT OR IGNORE INTO {t.name} ({t.key}, {t.target}, state, next_attempt) "
                          "VALUES (?,?,'pending',?)", (notice_id, target, now.isoformat())).rowcount == 1

    def retarget(self, db, notices_sql: str, undelivered_sql: str, params: tuple, target: str, contact,
                 now: dt.datetime) -> int:
        """Waiting or failed rows move and start over; undelivered notices without a row here get one."""
        t = self.table
        n = db.execute(f"UPDATE {t.name} SET {t.target}=?, state='pending', attempts=0, next_attempt=?, "
                       f"last_error='' WHERE state IN ('pending','failed') AND {t.key} IN ({notices_sql})",
                       (target, now.isoformat(), *params)).rowcount
        n += db.execute(f"INSERT INTO {t.name} ({t.key}, {t.target}, state, next_attempt) SELECT id, ?, "
                        f"'pending', ? FROM ({undelivered_sql}) WHERE id NOT IN (SELECT {t.key} FROM {t.name})",
                        (target, now.isoformat(), *params)).rowcount
        return n


class Outbox:
    """Runs every channel's due rows; ``on_result(channel, row, result)`` counts (done|retry|failed)."""

    def __init__(self, store, clock, channels: Sequence[Channel], *, notice_table: str, on_result=None):
        self.store, self.clock, self.channels = store, clock, tuple(channels)
        self.notice_table = notice_table
        self.on_result = on_result or (lambda channel, row, result: None)
        self._wake = asyncio.Event()

    def channel(self, name: str) -> Channel:
        return next(c for c in self.channels if c.name == name)

    # -- writing (inside the caller's transaction) -------------------------------------------------

    def enqueue(self, db, notice_id: int, contact, now: dt.datetime) -> list[str]:
        """Rows for one notice (already written in ``notice_table``) on every channel ``contact`` has a target on."""
        added = []
        for ch in self.channels:
            target = ch.target(contact) if contact is not None else None
            if target and ch.add(db, notice_id, target, now):
                added.append(ch.name)
        return added

    def supersede(self, db, notices_sql: str, params: tuple, why: str) -> None:
        """Rows still waiting for the notices ``notices_sql`` selects (ids) are superseded."""
        for ch in self.channels:
            t = ch.table
            db.execute(f"UPDATE {t.name} SET state='superseded', last_error=? WHERE state='pending' "
                       f"AND {t.key} IN ({notices_sql})", (why, *params))

    def retarget(self, db, notices_sql: str, params: tuple, contact, now: dt.datetime) -> dict[str, int]:
        """A new fault contact: undelivered rows of these notices go to its targets, channel by channel."""
        undelivered = (f"SELECT id FROM {self.notice_table} WHERE state IN ('pending','failed') "
                       f"AND id IN ({notices_sql})")
        moved: dict[str, int] = {}
        for ch in self.channels:
            target = ch.target(contact)
            moved[ch.name] = ch.retarget(db, notices_sql, undelivered, params, target, contact, now) if target else 0
        return moved

    def recover(self, db, now: dt.datetime) -> int:
        """After a restart: rows left 'sending' go back to 'pending' to be delivered again (same id)."""
        n = 0
        for ch in self.channels:
            n += db.execute(f"UPDATE {ch.table.name} SET state='pending', attempts=attempts+1, next_attempt=?, "
                            "last_error="
                            "'interrupted while sending; sending again with the same Message-ID' "
                            "WHERE state='sending'", (now.isoformat(),)).rowcount
        return n

    def due_now(self, channel: str) -> int:
        """A channel's link came (back) up: its waiting rows are due at once, not after their backoff."""
        with self.store.transaction() as db:
            n = db.execute(f"UPDATE {self.channel(channel).table.name} SET next_attempt=? WHERE state='pending'",
                           (self.clock.now().isoformat(),)).rowcount
        if n:
            self.poke()
        return n

    # -- the loop ----------------------------------------------------------------------------------

    def poke(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Forever: deliver what is due, then nap until the next due row, a poke, or MAX_NAP."""
        again = 0      # rounds run at once in a row because rows came due meanwhile (bounded: no spin)
        while True:
            attempted = 0
            for ch in self.channels:
                if not ch.ready():
                    continue
                try:
                    attempted = max(attempted, await self.run_channel(ch))
                except NocpolicyError as exc:
                    log.error("notices: %s delivery failed: %s", ch.name, exc)
            if attempted >= BATCH:
                continue                      # a backlog: next batch at once
            delay = self.delay()
            if attempted and delay <= 0 and again < 8:
                again += 1
                continue                      # came due while this round was delivering: at once
            again = 0
            await nap(self.clock, self._wake, min(MAX_NAP, max(MIN_NAP, delay)))

    def delay(self) -> float:
        with self.store.transaction() as db:
            due = [t for t in (ch.table.next_due(db) for ch in self.channels if ch.ready()) if t]
        return (min(due) - self.clock.now()).total_seconds() if due else MAX_NAP

    async def run_channel(self, ch: Channel, limit: int = BATCH) -> int:
        """Deliver every due row of one channel once; returns how many were due."""
        with self.store.transaction() as db:
            rows = ch.table.due(db, self.clock.now(), limit)
        if not rows:
            return 0
        done: set[int] = set()
        try:
            async with ch.session() as deliver:
                for row in rows:
                    fresh = self._claim(ch, row[ch.table.key])   # re-read: a new contact may have retargeted it
                    if fresh is not None:
                        self._record(ch, fresh, await deliver(fresh))
                    done.add(row[ch.table.key])
        except NocpolicyError as exc:
            log.warning("notices: %s: %s; will retry", ch.name, exc)
            for row in rows:
                if row[ch.table.key] not in done:
                    fresh = self._reread(ch, row[ch.table.key], ("pending", "sending"))
                    if fresh is not None:
                        self._record(ch, fresh, Attempt(False, True, str(exc)))
        return len(rows)

    def _reread(self, ch: Channel, key: int, states: tuple[str, ...]) -> dict | None:
        with self.store.transaction() as db:
            row = ch.table.row(db, key)
        return row if row is not None and row["state"] in states else None

    def _claim(self, ch: Channel, key: int) -> dict | None:
        """The row as it is now if still pending; exactly-once channels mark it 'sending' (committed)."""
        t = ch.table
        with self.store.transaction() as db:
            row = t.row(db, key)
            if row is None or row["state"] != "pending":
                return None
            if ch.exactly_once and db.execute(
                    f"UPDATE {t.name} SET state='sending' WHERE {t.key}=? AND state='pending'", (key,)).rowcount != 1:
                return None
        return row

    def _record(self, ch: Channel, row: dict, attempt: Attempt) -> str:
        """Store one attempt (``row`` as read before it); returns done | retry | failed."""
        t = ch.table
        attempts = row["attempts"] + 1
        now = self.clock.now()
        if attempt.ok:
            result, state, nxt = t.done, t.done, now
        elif attempt.temporary and attempts < MAX_ATTEMPTS:
            result, state, nxt = "retry", "pending", now + dt.timedelta(seconds=backoff(attempts))
        else:
            result, state, nxt = "failed", "failed", now
        cols = {"state": state, "attempts": attempts, "next_attempt": nxt.isoformat(),
                "last_error": "" if attempt.ok else attempt.error, t.done_at: now.isoformat() if attempt.ok else None,
                **attempt.columns}
        sets = ", ".join(f"{k}=?" for k in cols)
        with self.store.transaction() as db:
            db.execute(f"UPDATE {t.name} SET {sets} WHERE {t.key}=? AND state IN ('pending','sending')",
                       (*cols.values(), row[t.key]))
        if not attempt.ok:
            log.warning("notice %s on %s: %s (%s)", row.get("message_id", row[t.key]), ch.name, result,
                        attempt.error)
        self.on_result(ch, row, result)
        return result


@contextlib.asynccontextmanager
async def no_session(deliver: DeliverOne):
    """For channels without a per-batch session: yields ``deliver`` as it is."""
    yield deliver
