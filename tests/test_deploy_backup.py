"""deploy/backup: an online backup of a running daemon's state restores into a daemon
that has the same runtime decisions (an opt-out made before the backup)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

from helpers import REPO, DaemonProcess, copy_policies

SCRIPT = REPO / "deploy" / "backup" / "nocpolicy-backup"


def run_backup(state: Path, dest: Path, keep: int = 14, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(state), "--dest", str(dest),
                           "--keep", str(keep), *extra], capture_output=True, text=True, timeout=60)


def opted_out(d: DaemonProcess) -> set[str]:
    out = d.ctl_json("optout", "list")
    rows = out.get("customers", out) if isinstance(out, dict) else out
    return {r["customer"] for r in rows if r.get("optout")}


def test_backup_while_running_then_restore(tmp_path):
    (tmp_path / "a").mkdir()
    live = DaemonProcess(tmp_path / "a").start()
    try:
        live.ctl("optout", "on", "c1001", "--reason", "customer asked by phone", check=True)
        assert "c1001" in opted_out(live)
        # Back up while the daemon keeps writing (opt-out toggles on another customer).
        stop = threading.Event()

        def churn():
            on = True
            while not stop.is_set():
                live.ctl("optout", "on" if on else "off", "c1002")
                on = not on
        writer = threading.Thread(target=churn)
        writer.start()
        try:
            res = run_backup(live.state_dir, tmp_path / "backups", 14, "--with-pseudonym-key")
        finally:
            stop.set()
            writer.join(30)
        assert res.returncode == 0, res.stderr
        bundle = Path(res.stdout.strip())
        assert bundle.parent == tmp_path / "backups"
        assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
        for f in ("nocpolicy.db", "pseudonym.key"):
            assert stat.S_IMODE((bundle / f).stat().st_mode) == 0o600
        assert (bundle / "pseudonym.key").read_bytes() == (live.state_dir / "pseudonym.key").read_bytes()
        with sqlite3.connect(bundle / "nocpolicy.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            audit = [json.loads(r[0] or "null") for r in
                     db.execute("SELECT after FROM audit WHERE subject LIKE '%c1001%'").fetchall()]
            assert audit, "the opt-out's audit record is in the backup"
    finally:
        live.stop()

    # Restore: a fresh state directory from the bundle, a new daemon on it.
    (tmp_path / "b").mkdir()
    restored = DaemonProcess(tmp_path / "b", policies=copy_policies(tmp_path / "b"))
    restored.state_dir.mkdir(mode=0o700)
    shutil.copy(bundle / "nocpolicy.db", restored.state_dir / "nocpolicy.db")
    shutil.copy(bundle / "pseudonym.key", restored.state_dir / "pseudonym.key")
    restored.start()
    try:
        assert "c1001" in opted_out(restored)
        audit = restored.ctl_json("audit", "--subject", "customer:c1001")["audit"]
        assert any("customer asked by phone" in json.dumps(r, ensure_ascii=False) for r in audit)
    finally:
        restored.stop()


def test_backup_keeps_the_newest_and_refuses_a_wrong_directory(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        made = [Path(run_backup(d.state_dir, tmp_path / "backups", keep=2).stdout.strip()) for _ in range(3)]
    finally:
        d.stop()
    kept = sorted(p for p in (tmp_path / "backups").iterdir())
    assert kept == made[1:], "the oldest of three is pruned with --keep 2"
    res = run_backup(tmp_path / "nowhere", tmp_path / "backups")
    assert res.returncode != 0 and "does not exist" in res.stderr


def test_backup_leaves_the_pseudonym_key_out_unless_asked(tmp_path):
    """With the key, a pseudonym over a customer prefix is reversed by brute force, so a
    backup (copied off the machine) does not carry it by default (issue 14)."""
    d = DaemonProcess(tmp_path).start()
    try:
        res = run_backup(d.state_dir, tmp_path / "backups")
    finally:
        d.stop()
    assert res.returncode == 0, res.stderr
    bundle = Path(res.stdout.strip())
    assert (d.state_dir / "pseudonym.key").is_file()
    assert sorted(p.name for p in bundle.iterdir()) == ["nocpolicy.db"]
