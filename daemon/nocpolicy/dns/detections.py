"""Detection log (Art. 45(4), Art. 37): blocks only, pseudonymised clients, bounded by design.

The unit of the log is the **matched list entry**, not the queried name: one row per interval
(``dns.detection_log.interval``, 1 h by default), client pseudonym, list, entry and source,
with a count, first and last time and a few sample names. Malware that asks for random
subdomains of one C&C domain (DGA) makes one row per hour, not one per query.

Bounds, each drop counted by reason in ``counters`` (``nocpolicy_dns_detections_dropped_total``):

* ``per_client``: rows per client per interval (``client_cap``);
* ``per_interval``: rows per interval, all clients (``interval_cap``);
* :data:`MAX_PENDING` distinct keys waiting for the next write (``pending``);
* ``store_max``: bytes the state store may use; past it the oldest detection rows are
  deleted (``nocpolicy_dns_detection_rows_evicted_total``), so the file stops growing. The
  write-ahead log beside it is checkpointed and truncated every ``STORE_CHECK_EVERY``
  seconds (store/db.py: it stays under about a MiB).

The hot path only counts into a dict; a background task hands the batch to :meth:`write`
(in a thread) every second. The client address becomes an HMAC-SHA256 pseudonym at write
time (pseudonym.py: the key rotates). Rows older than the retention period are pruned hourly.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading

from ..clock import monotonic, wall
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
    """
    ALTER TABLE dns_detections ADD COLUMN entry TEXT;
    ALTER TABLE dns_detections ADD COLUMN samples TEXT;
    """,
)

MAX_PENDING = 50_000      # distinct keys per batch; beyond that detections are counted as dropped
STORE_CHECK_EVERY = 10.0  # seconds between two looks at the store's size


def pseudonym(key: bytes, address: str) -> str:
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()[:20]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


class _FixedKey:
    def __init__(self, key: bytes):
        self.key = key

    def current(self) -> bytes:
        return self.key


class DetectionLog:
    def __init__(self, store: Store, key, now=wall, counters: dict | None = None, conf=None):
        self.store, self.now = store, now
        self.keys = _FixedKey(key) if isinstance(key, bytes | bytearray) else key   # .current() -> bytes
        store.migrate("dns.detections", MIGRATIONS)
        self.counters = counters if counters is not None else {}
        self.pending: dict[tuple, list] = {}
        self.written = 0
        self._pseudo: dict[str, str] = {}
        self._pseudo_key = b""
        self._rows: dict[tuple, list] = {}     # (bucket, list, cls, action, cust, pseudonym, entry, source)
        self._lock = threading.Lock()
        self._checked = 0.0
        self.configure(conf)

    def configure(self, conf) -> None:
        """Apply ``dns.detection_log`` (None: the defaults of policy/dnsguard.py)."""
        if conf is None:
            from ..policy.dnsguard import DetectionLogConf
            conf = DetectionLogConf()
        self.conf = conf
        self.interval = conf.interval
        self._bucket_end = 0.0                 # the admission state below is for the bucket ending here
        self._admitted: set[tuple] = set()
        self._per_client: dict[str, int] = {}
        self._capped: set[str] = set()          # clients at their per_client cap in this interval

    @property
    def dropped(self) -> int:
        c = self.counters
        return sum(c.get("detections_" + r, 0) for r in ("client_cap", "interval_cap", "pending", "write_error"))

    def drop(self, reason: str, n: int = 1) -> None:
        k = "detections_" + reason
        self.counters[k] = self.counters.get(k, 0) + n

    # -- hot path --------------------------------------------------------------------

    def note(self, v, client: str, source: str = "dns") -> None:
        """Hot path: remember one block (v is a Verdict)."""
        self.note_many(v, client, 1, source)

    def note_many(self, v, client: str, n: int, source: str = "dns", names: list | None = None) -> None:
        """``n`` blocks of one entry within the last batch (from the engine's answer caches),
        for ``names`` (default: the verdict's name)."""
        self.note_batch([(v, client, n, names or None)], source)

    def note_batch(self, items: list, source: str = "dns") -> None:
        """Many :meth:`note_many` at once (the engine's drain, every second): ``items`` of
        ``(verdict, client, n, names)``; ``names`` is None (the verdict's name), a list, or a
        callable returning one (decoded only if this batch keeps samples of that row). One
        clock read; the per-item work inlined; a client over its cap for this interval is
        counted as dropped without the admission checks."""
        t = self.now()
        pending, admit, cap = self.pending, self._admit, self.conf.samples
        if t >= self._bucket_end:
            self._admit(None, "", t, 0)              # a new interval: roll the admission state
        capped, admitted = self._capped, self._admitted
        over = 0
        for v, client, n, names in items:
            key = (v.list, v.cls, v.action, v.customer, client, v.entry or v.name, source)
            p = pending.get(key)
            if p is None:
                if client in capped and key not in admitted:
                    over += n                        # (what _admit would say: client_cap)
                    continue
                if not admit(key, client, t, n):
                    continue
                names = (v.name,) if names is None else names() if callable(names) else names
                p = pending[key] = [t, t, 0, [names[0]]]
            elif names is None:
                names = (v.name,)
            elif len(p[3]) < cap and callable(names):
                names = names()
            p[1] = t
            p[2] += n
            s = p[3]
            if len(s) >= cap:
                continue
            for name in names:
                if len(s) >= cap:
                    break
                if name not in s:
                    s.append(name)
        if over:
            self.drop("client_cap", over)

    def _admit(self, key: tuple | None, client: str, t: float, n: int) -> bool:
        """A key not pending: may it become a row of this interval (caps)? (``key`` None:
        only roll the admission state over to a new interval.)"""
        if t >= self._bucket_end:
            self._bucket_end = t - t % self.interval + self.interval
            self._admitted.clear()
            self._per_client.clear()
            self._capped.clear()
        if key is None:
            return False
        if len(self.pending) >= MAX_PENDING:
            self.drop("pending", n)
            return False
        if key in self._admitted:
            return True
        conf = self.conf
        if len(self._admitted) >= conf.per_interval:
            self.drop("interval_cap", n)
            return False
        c = self._per_client.get(client, 0)
        if c >= conf.per_client:
            self._capped.add(client)
            self.drop("client_cap", n)
            return False
        self._per_client[client] = c + 1
        self._admitted.add(key)
        return True

    def _client(self, address: str) -> str:
        key = self.keys.current()
        if key != self._pseudo_key:           # rotated: forget every pseudonym of the old key
            self._pseudo, self._pseudo_key = {}, key
        p = self._pseudo.get(address)
        if p is None:
            if len(self._pseudo) > 100_000:
                self._pseudo.clear()
            p = self._pseudo[address] = pseudonym(key, address)
        return p

    def take(self) -> dict:
        """The batch since the last take, keyed ``(list, class, action, customer, client, name,
        source, entry)`` (``name``: the first sample) -> ``[first, last, count, samples]``."""
        batch, self.pending = self.pending, {}
        return {(k[0], k[1], k[2], k[3], k[4], p[3][0], k[6], k[5]): p for k, p in batch.items()}

    # -- writer thread ---------------------------------------------------------------

    def write(self, batch: dict) -> int:
        """Write one batch (call from a thread: it touches SQLite). Returns the rows touched."""
        if not batch:
            return 0
        with self._lock:
            n = self._write(batch)
            now = monotonic()
            if now - self._checked >= STORE_CHECK_EVERY:
                self._checked = now
                self.enforce_store_max()
                self.store.checkpoint()          # the WAL back to zero bytes (store/db.py)
        return n

    def _write(self, batch: dict) -> int:
        rows, interval, nsamples = self._rows, self.interval, self.conf.samples
        inserts, updates = [], []
        for (lst, cls, action, cust, client, _name, source, entry), (first, last, n, samples) in batch.items():
            bucket = first - first % interval
            key = (bucket, lst, cls, action, cust, self._client(client), entry, source)
            row = rows.get(key)
            if row is None:
                row = rows[key] = [None, first, last, n, list(samples[:nsamples])]
                inserts.append((key, row))
            else:
                row[2], row[3] = max(row[2], last), row[3] + n
                row[4].extend(x for x in samples if x not in row[4] and len(row[4]) < nsamples)
                if row[0] is not None:
                    updates.append((_iso(row[2]), row[3], json.dumps(row[4]), row[0]))
        with self.store.transaction() as db:
            for key, row in inserts:
                _b, lst, cls, action, cust, client, entry, source = key
                cur = db.execute("INSERT INTO dns_detections (ts, last_ts, list, class, action, customer, client, "
                                 "name, source, count, entry, samples) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                 (_iso(row[1]), _iso(row[2]), lst, cls, action, cust, client,
                                  (row[4] or [entry])[0], source, row[3], entry, json.dumps(row[4])))
                row[0] = cur.lastrowid
            db.executemany("UPDATE dns_detections SET last_ts = ?, count = ?, samples = ? WHERE id = ?", updates)
        self._forget_old_rows(batch)
        self.written += len(inserts)
        return len(inserts) + len(updates)

    def _forget_old_rows(self, batch: dict) -> None:
        """Keep the row ids of the current and the previous interval only (bounded memory)."""
        newest = max(p[0] for p in batch.values())
        floor = newest - newest % self.interval - self.interval
        if any(k[0] < floor for k in self._rows):
            self._rows = {k: r for k, r in self._rows.items() if k[0] >= floor}

    def store_used(self) -> int:
        """Bytes of the state store in use (pages minus free pages)."""
        db = self.store
        pages = db.one("PRAGMA page_count")[0]
        free = db.one("PRAGMA freelist_count")[0]
        return (pages - free) * db.one("PRAGMA page_size")[0]

    def enforce_store_max(self) -> int:
        """Past ``store_max``, delete the oldest detection rows (to 90 % of it); counted."""
        cap = self.conf.store_max
        used = self.store_used()
        if used <= cap:
            return 0
        total = self.store.one("SELECT COUNT(*) FROM dns_detections")[0]
        if not total:
            return 0
        n = max(1, min(total, int(total * (used - 0.9 * cap) / used) + 1))
        last = self.store.one("SELECT id FROM dns_detections ORDER BY id LIMIT 1 OFFSET ?", (n - 1,))[0]
        gone = self.store.execute("DELETE FROM dns_detections WHERE id <= ?", (last,)).rowcount or 0
        self._rows = {k: r for k, r in self._rows.items() if r[0] is None or r[0] > last}
        self.counters["detection_rows_evicted"] = self.counters.get("detection_rows_evicted", 0) + gone
        return gone

    def prune(self, retention: float) -> int:
        cutoff = _iso(self.now() - retention)
        with self._lock:
            cur = self.store.execute("DELETE FROM dns_detections WHERE last_ts < ?", (cutoff,))
            self._rows = {k: r for k, r in self._rows.items() if r[2] >= self.now() - retention}
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
        out = []
        for r in self.store.all(sql, params):
            d = dict(r)
            d["samples"] = json.loads(d["samples"]) if d.get("samples") else [d["name"]]
            out.append(d)
        return out

    def summary(self, *, since: dt.datetime | None, customer: str | None) -> list[dict]:
        sql = ("SELECT list, class, customer, source, SUM(count) AS count, COUNT(DISTINCT client) AS clients, "
               "COUNT(DISTINCT coalesce(entry, name)) AS entries, COUNT(DISTINCT name) AS names, "
               "MIN(ts) AS first, MAX(last_ts) AS last FROM dns_detections WHERE 1=1")
        params: list = []
        if since is not None:
            sql += " AND last_ts >= ?"
            params.append(since.astimezone(dt.UTC).isoformat(timespec="milliseconds"))
        if customer:
            sql += " AND customer = ?"
            params.append(customer)
        sql += " GROUP BY list, class, customer, source ORDER BY count DESC"
        return [dict(r) for r in self.store.all(sql, params)]
