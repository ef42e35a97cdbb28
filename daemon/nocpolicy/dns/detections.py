"""Detection log (Art. 45(4), Art. 37): blocks only, pseudonymised clients, bounded retention.

The hot path only counts into an in-memory dict keyed by (list, class, action,
customer, client, name, source); a background task writes the batch to the
state store every second (identical detections in one batch become one row
with a count). The client address is replaced by an HMAC-SHA256 pseudonym
keyed with the daemon's secret, so the log can be correlated without holding
addresses. Rows older than the retention period are pruned hourly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time

from ..store import Store

MIGRATIONS = (
    """
    CREATE TABLE dns_detections (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        ts        TEXT NOT NULL,
        last_ts   TEXT NOT NULL,
        list      TEXT NOT NULL,
        class     TEXT NOT NULL,
        action    TEXT NOT NULL,
        customer  TEXT,
        client    TEXT NOT NULL,
        name      TEXT NOT NULL,
        source    TEXT NOT NULL DEFAULT 'dns',
        count     INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX dns_detections_ts ON dns_detections(ts);
    CREATE INDEX dns_detections_customer ON dns_detections(customer, ts);
    """,
)

MAX_PENDING = 50_000      # distinct keys per batch; beyond that detections are counted as dropped


def pseudonym(key: bytes, address: str) -> str:
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:20]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


class DetectionLog:
    def __init__(self, store: Store, key: bytes, now=time.time):
        self.store, self.key, self.now = store, key, now
        store.migrate("dns.detections", MIGRATIONS)
        self.pending: dict[tuple, list] = {}
        self.dropped = 0
        self.written = 0
        self._pseudo: dict[str, str] = {}

    def note(self, v, client: str, source: str = "dns") -> None:
        """Hot path: remember one block (v is a Verdict)."""
        key = (v.list, v.cls, v.action, v.customer, client, v.name, source)
        p = self.pending.get(key)
        t = self.now()
        if p is not None:
            p[1] = t
            p[2] += 1
        elif len(self.pending) < MAX_PENDING:
            self.pending[key] = [t, t, 1]
        else:
            self.dropped += 1

    def note_many(self, v, client: str, n: int, source: str = "dns") -> None:
        """``n`` identical blocks within the last batch (from the engine's answer cache)."""
        key = (v.list, v.cls, v.action, v.customer, client, v.name, source)
        p = self.pending.get(key)
        t = self.now()
        if p is not None:
            p[1] = t
            p[2] += n
        elif len(self.pending) < MAX_PENDING:
            self.pending[key] = [t, t, n]
        else:
            self.dropped += n

    def _client(self, address: str) -> str:
        p = self._pseudo.get(address)
        if p is None:
            if len(self._pseudo) > 100_000:
                self._pseudo.clear()
            p = self._pseudo[address] = pseudonym(self.key, address)
        return p

    def take(self) -> dict:
        batch, self.pending = self.pending, {}
        return batch

    def write(self, batch: dict) -> int:
        """Write one batch (call from a thread: it touches SQLite)."""
        if not batch:
            return 0
        rows = [(_iso(first), _iso(last), lst, cls, action, cust, self._client(client), name, source, n)
                for (lst, cls, action, cust, client, name, source), (first, last, n) in batch.items()]
        self.store.executemany("INSERT INTO dns_detections (ts, last_ts, list, class, action, customer, "
                               "client, name, source, count) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        self.written += len(rows)
        return len(rows)

    def prune(self, retention: float) -> int:
        cutoff = _iso(self.now() - retention)
        cur = self.store.execute("DELETE FROM dns_detections WHERE last_ts < ?", (cutoff,))
        return cur.rowcount or 0

    def query(self, *, since: dt.datetime | None, customer: str | None, limit: int) -> list[dict]:
        sql, params = "SELECT * FROM dns_detections WHERE 1=1", []
        if since is not None:
            sql += " AND last_ts >= ?"
            params.append(since.astimezone(dt.UTC).isoformat(timespec="milliseconds"))
        if customer:
            sql += " AND customer = ?"
            params.append(customer)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [dict(r) for r in self.store.all(sql, params)]

    def summary(self, *, since: dt.datetime | None, customer: str | None) -> list[dict]:
        sql = ("SELECT list, class, customer, source, SUM(count) AS count, COUNT(DISTINCT client) AS clients, "
               "COUNT(DISTINCT name) AS names, MIN(ts) AS first, MAX(last_ts) AS last FROM dns_detections "
               "WHERE 1=1")
        params: list = []
        if since is not None:
            sql += " AND last_ts >= ?"
            params.append(since.astimezone(dt.UTC).isoformat(timespec="milliseconds"))
        if customer:
            sql += " AND customer = ?"
            params.append(customer)
        sql += " GROUP BY list, class, customer, source ORDER BY count DESC"
        return [dict(r) for r in self.store.all(sql, params)]
