"""The SQLite state store: migrations, namespaces, append-only audit, key/value facts."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from helpers import DaemonProcess
from nocpolicy.errors import StoreError
from nocpolicy.store import Store
from nocpolicy.store.db import CORE_MIGRATIONS

A1 = "CREATE TABLE a_items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"
A2 = "ALTER TABLE a_items ADD COLUMN note TEXT;"
A3 = "CREATE INDEX a_items_name ON a_items(name);"
B1 = "CREATE TABLE b_things (k TEXT PRIMARY KEY);"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "nocpolicy.db"


def migrations(path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as raw:
        return raw.execute("SELECT component, version FROM schema_migrations ORDER BY component, version").fetchall()


def tables(store: Store) -> set[str]:
    return {r["name"] for r in store.all("SELECT name FROM sqlite_master WHERE type='table'")}


def test_empty_database_gets_core_schema(db_path):
    store = Store(db_path)
    try:
        assert migrations(db_path) == [("core", v) for v in range(1, len(CORE_MIGRATIONS) + 1)]
        assert {"audit", "kv", "schema_migrations"} <= tables(store)
        assert store.one("PRAGMA journal_mode")[0] == "wal"
        assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    finally:
        store.close()
    # Reopening applies nothing twice.
    Store(db_path).close()
    assert migrations(db_path) == [("core", v) for v in range(1, len(CORE_MIGRATIONS) + 1)]


def test_component_namespaces_are_independent(db_path):
    store = Store(db_path)
    assert store.migrate("alpha", (A1, A2)) == 2
    assert store.migrate("beta", (B1,)) == 1
    assert store.schema_version("alpha") == 2 and store.schema_version("beta") == 1
    store.execute("INSERT INTO a_items (name, note) VALUES ('x', 'y')")
    store.close()
    # A later release appends a migration: only the new one runs, data survives.
    store = Store(db_path)
    assert store.migrate("alpha", (A1, A2, A3)) == 3
    assert store.one("SELECT name, note FROM a_items")["note"] == "y"
    store.close()
    assert [m for m in migrations(db_path) if m[0] != "core"] == [
        ("alpha", 1), ("alpha", 2), ("alpha", 3), ("beta", 1)]


def test_refuses_a_database_newer_than_the_code(db_path):
    store = Store(db_path)
    store.migrate("alpha", (A1, A2, A3))
    store.close()
    store = Store(db_path)
    with pytest.raises(StoreError, match=r"alpha schema v3, newer than this nocpolicy knows \(v2\)"):
        store.migrate("alpha", (A1, A2))
    store.close()


def test_refuses_a_newer_core_schema(db_path):
    Store(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("INSERT INTO schema_migrations VALUES ('core', 99, 'later')")
    with pytest.raises(StoreError, match="core schema v99"):
        Store(db_path)


def test_daemon_refuses_to_start_on_a_newer_database(tmp_path):
    d = DaemonProcess(tmp_path)
    Store(d.state_dir / "nocpolicy.db").close()
    with sqlite3.connect(d.state_dir / "nocpolicy.db") as raw:
        raw.execute("INSERT INTO schema_migrations VALUES ('core', 99, 'later')")
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    d.kill()
    assert "refusing to downgrade" in d.log() and "Traceback" not in d.log()


def test_failed_migration_rolls_back(db_path):
    store = Store(db_path)
    bad = "CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);"
    with pytest.raises(StoreError, match="gamma migration 1 failed"):
        store.migrate("gamma", (bad,))
    assert store.schema_version("gamma") == 0
    assert "half" not in tables(store)
    store.close()


def test_trigger_bodies_survive_statement_splitting(db_path):
    store = Store(db_path)
    store.migrate("delta", ("""
        CREATE TABLE d (x INTEGER);
        CREATE TRIGGER d_positive BEFORE INSERT ON d WHEN NEW.x < 0
            BEGIN SELECT RAISE(ABORT, 'x must be positive'); END;
        """,))
    store.execute("INSERT INTO d VALUES (1)")
    with pytest.raises(StoreError, match="x must be positive"):
        store.execute("INSERT INTO d VALUES (-1)")
    store.close()


def test_audit_is_append_only(db_path):
    store = Store(db_path)
    rid = store.audit("admin", "optout.set", "customer:c1001", {"on": False}, {"on": True, "reason": "asked"})
    with pytest.raises(StoreError, match="audit is append-only"):
        store.execute("UPDATE audit SET actor='someone else' WHERE id=?", (rid,))
    with pytest.raises(StoreError, match="audit is append-only"):
        store.execute("DELETE FROM audit WHERE id=?", (rid,))
    # Not even a raw connection can rewrite history.
    with sqlite3.connect(db_path) as raw, pytest.raises(sqlite3.IntegrityError):
        raw.execute("DELETE FROM audit")
    rows = store.audit_log()
    assert len(rows) == 1 and rows[0]["actor"] == "admin"
    assert rows[0]["before"] == {"on": False} and rows[0]["after"] == {"on": True, "reason": "asked"}
    store.close()


def test_audit_inside_a_transaction_rolls_back_with_it(db_path):
    store = Store(db_path)
    store.migrate("alpha", (A1,))
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.execute("INSERT INTO a_items (name) VALUES ('x')")
        store.audit("admin", "item.add", "item:x", None, {"name": "x"}, db=tx)
        raise RuntimeError("boom")
    assert store.audit_log() == [] and store.all("SELECT * FROM a_items") == []
    with store.transaction() as tx:
        tx.execute("INSERT INTO a_items (name) VALUES ('y')")
        store.audit("admin", "item.add", "item:y", None, {"name": "y"}, db=tx)
    assert [r["subject"] for r in store.audit_log()] == ["item:y"]
    store.close()


def test_audit_log_filters_and_orders(db_path):
    store = Store(db_path)
    for i in range(5):
        store.audit("admin", "x.set", f"s:{i % 2}", None, {"i": i})
    assert [r["after"]["i"] for r in store.audit_log(subject="s:0")] == [4, 2, 0]
    assert [r["after"]["i"] for r in store.audit_log(limit=2)] == [4, 3]
    store.close()


def test_kv_and_persistence(db_path):
    store = Store(db_path)
    assert store.get("policy.last_good") is None and store.get("missing", 7) == 7
    store.put("policy.last_good", {"version": "abc"})
    store.put("policy.last_good", {"version": "def"})
    store.close()
    store = Store(db_path)
    assert store.get("policy.last_good") == {"version": "def"}
    store.close()


def test_unopenable_database_is_a_store_error(tmp_path):
    (tmp_path / "dir-not-file").mkdir()
    with pytest.raises(StoreError, match="cannot open state database"):
        Store(tmp_path / "dir-not-file")


def test_concurrent_migrators_apply_each_migration_once(db_path):
    """Two processes (e.g. DNS workers) opening the same database at once."""
    import subprocess
    import sys
    Store(db_path).close()
    code = (
        "import sys; from nocpolicy.store import Store; s = Store(sys.argv[1]); "
        f"s.migrate('alpha', ({A1!r}, {A2!r}, {A3!r})); s.close()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db_path)], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert [m for m in migrations(db_path) if m[0] == "alpha"] == [("alpha", 1), ("alpha", 2), ("alpha", 3)]
