"""Session history in the state store: every session with its addresses, customer,
login, NAS, start, stop and how it ended. Kept for the policy's retention.

Writes go through their own connection with ``synchronous=FULL`` (fsync at each
commit: an Accounting-Response promises the record survives a power cut) and are
grouped (see commit.py); reads use another connection. Both are to the daemon's
one database file (WAL), so backups and the store's migrations cover them.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from ..errors import StoreError
from ..gcpause import gc_paused
from ..store import Store
from ..subscribers.live import parse_addrs
from .model import Live, Ops, covering, net_text

MIGRATIONS = (
    """
    CREATE TABLE sessions (
        id       INTEGER PRIMARY KEY,
        source   TEXT NOT NULL,
        nas      TEXT NOT NULL,
        sid      TEXT NOT NULL,
        customer TEXT,
        implicit INTEGER NOT NULL DEFAULT 0,
        login    TEXT NOT NULL DEFAULT '',
        calling  TEXT NOT NULL DEFAULT '',
        class    TEXT NOT NULL DEFAULT '',
        start    REAL NOT NULL,
        stop     REAL,
        last     REAL NOT NULL,
        interval REAL NOT NULL DEFAULT 0,
        ended    TEXT,
        addrs    TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_open ON sessions(id) WHERE stop IS NULL;
    CREATE INDEX sessions_customer ON sessions(customer, start);
    CREATE INDEX sessions_stop ON sessions(stop);
    CREATE TABLE session_addrs (
        net     TEXT NOT NULL,
        start   REAL NOT NULL,
        session INTEGER NOT NULL,
        plen    INTEGER NOT NULL,
        PRIMARY KEY (net, start, session)
    ) WITHOUT ROWID;
    CREATE INDEX session_addrs_session ON session_addrs(session);
    CREATE TABLE session_plens (
        fam  INTEGER NOT NULL,
        plen INTEGER NOT NULL,
        PRIMARY KEY (fam, plen)
    );
    """,
    # the session's stop next to each of its addresses: whois skips, in the address index
    # itself, the sessions that ended before the time asked, and reads only the rows that
    # match (cold pages of a large history: issue 15's whois p99). NULL on rows written
    # before: those are read and checked as before.
    """
    ALTER TABLE session_addrs ADD COLUMN stop REAL;
    """,
    # sessions_stop answers "stop IS NULL" too (NULLs first, in id order): the partial index
    # was one more b-tree written by every Start and Stop (7 % of a commit's time)
    """
    DROP INDEX IF EXISTS sessions_open;
    """,
)

COLUMNS = ("id", "source", "nas", "sid", "customer", "implicit", "login", "calling", "class",
           "start", "stop", "last", "interval", "ended", "addrs")




def _rollback(db: sqlite3.Connection) -> None:
    """Roll back an open transaction; nothing to do on a closed connection."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.ProgrammingError:
        pass


def row_dict(r: sqlite3.Row) -> dict:
    d = {k: r[k] for k in COLUMNS if k != "addrs"}
    d["session_id"] = d.pop("sid")
    d["implicit"] = bool(d["implicit"])
    d["addresses"] = [net_text(n) for n in parse_addrs(r["addrs"])]
    return d


class History:
    def __init__(self, store: Store):
        store.migrate("sessions", MIGRATIONS)
        self.path = store.path
        self._w = self._connect(full=True)
        self._r = self._connect(full=False)
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self.plens: set[tuple[int, int]] = {(r[0], r[1]) for r in
                                            self._r.execute("SELECT fam, plen FROM session_plens")}

    def _connect(self, *, full: bool) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA busy_timeout=10000")
            db.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
            return db
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the session history in {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close both connections once no thread is using them. A stop cancels the task
        awaiting a prune or a read, not the thread running it: closing a connection under
        a running statement crashes the interpreter (SIGSEGV seen on a refused start). After
        this, every call fails with :class:`StoreError`."""
        with self._wlock, self._rlock:
            self._w.close()
            self._r.close()

    # -- writes (one transaction per group commit; write() in a thread, or stage() on the
    #    event loop and its commit in a thread) -----------------------------------------

    def write(self, ops: Ops) -> None:
        """Record ``ops`` in one transaction, durable on return (blocking: run it in a thread)."""
        with self._wlock:
            new_plens = self._statements(ops)
            self._commit()
        self.plens |= new_plens

    def stage(self, ops: Ops) -> Callable[[], None] | None:
        """Run the statements of ``ops`` in a new transaction here and now, and return what
        commits it (the fsync: call it in a thread); None, with nothing done, when another
        writer (a prune) holds the connection. For the event loop: the statements are CPU
        work on cached pages, and run in a worker thread they handed the GIL back and forth
        with the loop at every row (a tenth of ingest when the threads ran on two cores).
        Raises StoreError (the transaction rolled back)."""
        if not self._wlock.acquire(blocking=False):
            return None
        try:
            new_plens = self._statements(ops)
        except BaseException:
            self._wlock.release()
            raise

        def commit() -> None:
            try:
                self._commit()
            finally:
                self._wlock.release()
            self.plens |= new_plens
        return commit

    def _statements(self, ops: Ops) -> set[tuple[int, int]]:
        """BEGIN and the writes of ``ops`` (the caller holds the write lock); returns the new
        (family, prefix length) pairs, noted once committed."""
        new_plens = {(int(k[0]), plen) for _, k, plen, _ in ops.addrs} - self.plens
        db = self._w
        try:
            db.execute("BEGIN IMMEDIATE")
            if ops.inserts:
                db.executemany(f"INSERT OR IGNORE INTO sessions ({','.join(COLUMNS)}) VALUES "
                               f"({','.join('?' * len(COLUMNS))})", ops.inserts)
            if ops.addrs:
                db.executemany("INSERT OR IGNORE INTO session_addrs (session, net, plen, start) "
                               "VALUES (?,?,?,?)", ops.addrs)
            if new_plens:
                db.executemany("INSERT OR IGNORE INTO session_plens VALUES (?,?)", sorted(new_plens))
            if ops.touches:
                db.executemany("UPDATE sessions SET last=? WHERE id=? AND stop IS NULL", ops.touches)
            if ops.closes:
                db.executemany("UPDATE sessions SET stop=?, ended=? WHERE id=? AND stop IS NULL",
                               ops.closes)
                db.executemany("UPDATE session_addrs SET stop=? WHERE session=? AND stop IS NULL",
                               [(stop, i) for stop, _, i in ops.closes])
        except sqlite3.Error as exc:
            _rollback(db)
            raise StoreError(f"cannot record sessions: {exc}") from exc
        return new_plens

    def _commit(self) -> None:
        try:
            self._w.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(self._w)
            raise StoreError(f"cannot record sessions: {exc}") from exc

    def prune(self, before: float, limit: int = 50_000) -> int:
        """Delete up to ``limit`` sessions that ended before ``before``; returns how many."""
        with self._wlock:
            db = self._w
            try:
                db.execute("BEGIN IMMEDIATE")
                ids = [r[0] for r in db.execute("SELECT id FROM sessions WHERE stop < ? LIMIT ?",
                                                (before, limit))]
                db.executemany("DELETE FROM session_addrs WHERE session=?", ((i,) for i in ids))
                db.executemany("DELETE FROM sessions WHERE id=?", ((i,) for i in ids))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise StoreError(f"cannot prune session history: {exc}") from exc
        return len(ids)

    # -- reads ------------------------------------------------------------------------

    def _all(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._rlock:
            try:
                return self._r.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"session history: {exc}") from exc

    def open_sessions(self) -> tuple[list[Live], int]:
        """The sessions open in the store, read in chunks (no list of a million rows at once);
        the few distinct source, NAS and interval values are shared, not one copy a session."""
        live: list[Live] = []
        shared: dict = {}
        with self._rlock, gc_paused():
            try:
                cur = self._r.execute("SELECT id, source, nas, sid, customer, addrs, start, last, interval, "
                                      "implicit FROM sessions WHERE stop IS NULL")
                while rows := cur.fetchmany(10_000):
                    for i, src, nas, sid, cid, addrs, start, last, interval, implicit in rows:
                        live.append(Live(i, shared.setdefault(src, src), shared.setdefault(nas, nas), sid, cid,
                                         parse_addrs(addrs), start, start if last == start else last,
                                         shared.setdefault(interval, interval), bool(implicit)))
            except sqlite3.Error as exc:
                raise StoreError(f"session history: {exc}") from exc
        top = self._all("SELECT MAX(id) FROM sessions")[0][0] or 0
        return live, top + 1

    def open_rows(self, chunk: int = 10_000):
        """How many sessions are open in the store, then those sessions ``chunk`` raw rows at a
        time (for :meth:`Book.restore_rows`), then ``MAX(id) + 1`` as the last item. Its own
        read-only connection: each item may be read in another thread, one at a time."""
        try:
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=10.0)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the session history in {self.path}: {exc}") from exc
        try:
            yield db.execute("SELECT COUNT(*) FROM sessions WHERE stop IS NULL").fetchone()[0]
            cur = db.execute("SELECT id, source, nas, sid, customer, addrs, start, last, interval, implicit "
                             "FROM sessions WHERE stop IS NULL")
            while rows := cur.fetchmany(chunk):
                yield rows
            yield (db.execute("SELECT MAX(id) FROM sessions").fetchone()[0] or 0) + 1
        except sqlite3.Error as exc:
            raise StoreError(f"session history: {exc}") from exc
        finally:
            db.close()

    def at(self, fam: int, ip: int, ts: float, limit: int = 8) -> list[tuple[dict, int]]:
        """Sessions whose address or prefix contained ``ip`` at ``ts``: (row, matched length),
        longest prefix first."""
        out = []
        for f, plen in sorted(self.plens, key=lambda x: -x[1]):
            if f != fam:
                continue
            key = (f"4{covering(fam, ip, plen)[1]:08x}" if fam == 4
                   else f"6{covering(fam, ip, plen)[1]:032x}")
            # the address index alone (with each session's stop) names the candidates; only
            # those are read from the sessions table
            cand = [i for i, stop in self._all(
                "SELECT session, stop FROM session_addrs WHERE net=? AND plen=? AND start<=? "
                "ORDER BY start DESC LIMIT ?", (key, plen, ts, limit)) if stop is None or stop >= ts]
            if not cand:
                continue
            rows = {r["id"]: r for r in self._all(
                f"SELECT * FROM sessions WHERE id IN ({','.join('?' * len(cand))})", cand)}
            out += [(row_dict(r), plen) for r in (rows[i] for i in cand if i in rows)
                    if r["stop"] is None or r["stop"] >= ts]
        return out

    def list(self, *, customer: str | None, active: bool, limit: int) -> list[dict]:
        where, params = [], []
        if customer is not None:
            where.append("customer=?")
            params.append(customer)
        if active:
            where.append("stop IS NULL")
        sql = "SELECT * FROM sessions" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY start DESC LIMIT ?"
        return [row_dict(r) for r in self._all(sql, (*params, limit))]

    def count(self) -> int:
        return self._all("SELECT COUNT(*) FROM sessions")[0][0]
