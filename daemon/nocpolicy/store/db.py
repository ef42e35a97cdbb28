"""SQLite state store: WAL mode, versioned migrations per component, append-only audit.

Each component owns its tables and registers its migrations under its own name
(``store.migrate("dns", DNS_MIGRATIONS)``), so components evolve their schema
independently. Migrations are applied in order inside one transaction each and
recorded in ``schema_migrations``. The ``audit`` table refuses UPDATE and DELETE.

The write-ahead log is kept small: SQLite checkpoints it every ``WAL_AUTOCHECKPOINT`` pages
(1 MiB instead of its 4 MiB default) and cuts the file back to ``WAL_LIMIT`` bytes when it
starts over (``journal_size_limit``), and :meth:`Store.checkpoint` (run every few seconds by
the busiest writer, the DNS detection log) copies it into the database and truncates it to
zero, so the state directory is the database plus at most about a MiB of log, even under a
steady stream of small writes (issue 14).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import clock
from ..errors import StoreError

WAL_AUTOCHECKPOINT = 256          # pages (4 KiB each)
WAL_LIMIT = 1024 * 1024           # bytes the -wal file is cut back to after a checkpoint

CORE_MIGRATIONS: Sequence[str] = (
    # 1: audit trail
    """
    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        ts       TEXT NOT NULL,
        actor    TEXT NOT NULL,
        action   TEXT NOT NULL,
        subject  TEXT NOT NULL,
        before   TEXT,
        after    TEXT
    );
    CREATE INDEX audit_subject ON audit(subject, id);
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    """,
    # 2: small key/value facts the daemon keeps (last good policy version, ...)
    """
    CREATE TABLE kv (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        ts    TEXT NOT NULL
    );
    """,
)


def utcnow() -> dt.datetime:
    return clock.utcnow()


def _json(value) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


class Store:
    """One SQLite database file. Thread-safe through a lock; calls are short."""

    def __init__(self, path: str | os.PathLike, *, clock=utcnow):
        self.path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # Create the file 0600 before SQLite opens it: its -wal and -shm files
                # inherit the database file's permissions.
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                for path in (self.path, self.path + "-wal", self.path + "-shm"):
                    if os.path.exists(path):
                        os.chmod(path, 0o600)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            self._db.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                component TEXT NOT NULL, version INTEGER NOT NULL, applied TEXT NOT NULL,
                PRIMARY KEY (component, version))""")
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc
        self.migrate("core", CORE_MIGRATIONS)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- schema ----------------------------------------------------------------------

    def schema_version(self, component: str) -> int:
        row = self.one("SELECT MAX(version) AS v FROM schema_migrations WHERE component=?", (component,))
        return row["v"] or 0 if row else 0

    def migrate(self, component: str, migrations: Sequence[str]) -> int:
        """Apply the migrations of ``component`` not applied yet; returns the new version."""
        current = self.schema_version(component)
        if current > len(migrations):
            raise StoreError(f"state database {self.path} has {component} schema v{current}, newer than "
                             f"this nocpolicy knows (v{len(migrations)}): refusing to downgrade")
        for version, script in enumerate(migrations[current:], start=current + 1):
            with self.transaction() as db:
                # Another process (a DNS worker) may have applied it meanwhile: look again
                # inside the write transaction, which serialises migrators.
                row = db.execute("SELECT MAX(version) FROM schema_migrations WHERE component=?",
                                 (component,)).fetchone()
                if (row[0] or 0) >= version:
                    continue
                try:
                    for stmt in _statements(script):
                        db.execute(stmt)
                except sqlite3.Error as exc:
                    raise StoreError(f"{component} migration {version} failed: {exc}") from exc
                db.execute("INSERT INTO schema_migrations VALUES (?,?,?)",
                           (component, version, self._clock().isoformat()))
        return len(migrations)

    # -- queries ---------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"state database error: {exc}") from exc

    def executemany(self, sql: str, rows) -> None:
        with self.transaction() as db:
            db.executemany(sql, rows)

    def all(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self.execute(sql, params).fetchall()

    def one(self, sql: str, params=()) -> sqlite3.Row | None:
        with self._lock:
            return self.execute(sql, params).fetchone()

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and truncate it to zero bytes, without
        waiting: False if a reader (another process) kept it from finishing (the next one will)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA busy_timeout=0")
                busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error:
                busy = 1
            finally:
                self._db.execute("PRAGMA busy_timeout=10000")
        return not busy

    # -- audit -----------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str, before=None, after=None,
              db: sqlite3.Connection | None = None) -> int:
        """Append one audit record. Pass ``db`` to write it inside the caller's transaction."""
        row = (self._clock().isoformat(), actor, action, subject, _json(before), _json(after))
        sql = "INSERT INTO audit (ts, actor, action, subject, before, after) VALUES (?,?,?,?,?,?)"
        if db is not None:
            return db.execute(sql, row).lastrowid
        with self.transaction() as tx:
            return tx.execute(sql, row).lastrowid

    def audit_log(self, *, subject: str | None = None, limit: int = 100) -> list[dict]:
        if subject:
            rows = self.all("SELECT * FROM audit WHERE subject=? ORDER BY id DESC LIMIT ?", (subject, limit))
        else:
            rows = self.all("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        out = []
        for r in rows:
            d = dict(r)
            for k in ("before", "after"):
                d[k] = json.loads(d[k]) if d[k] is not None else None
            out.append(d)
        return out

    # -- kv --------------------------------------------------------------------------

    def get(self, key: str, default=None):
        row = self.one("SELECT value FROM kv WHERE key=?", (key,))
        return json.loads(row["value"]) if row else default

    def put(self, key: str, value) -> None:
        self.execute("INSERT INTO kv (key, value, ts) VALUES (?,?,?) ON CONFLICT(key) DO UPDATE "
                     "SET value=excluded.value, ts=excluded.ts",
                     (key, _json(value), self._clock().isoformat()))


def _statements(script: str) -> list[str]:
    """Split a migration script into statements, keeping trigger bodies whole."""
    out, buf = [], ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
