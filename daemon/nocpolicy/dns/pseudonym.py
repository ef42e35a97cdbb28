"""The pseudonym key of the detection log (Art. 37), rotated so that old pseudonyms cannot be linked to new ones.

A pseudonym is HMAC-SHA256(key, client address), cut to 20 hex digits. Whoever holds the key
can reverse it by trying every address of a prefix (a /16 takes well under a second), so the
key is what protects the addresses. It lives in ``<state-dir>/pseudonym.key`` (0600) and is
replaced by a fresh random key every ``dns.detection_log.key_rotation`` (1 day by default,
always shorter than the retention); the old key is overwritten, so rows of an earlier period
can no longer be reversed by anybody, nor linked to the same client's later rows.

The main process rotates (by the file's age, so restarts do not reset the period); DNS
worker processes only follow the file. There is no fixed fallback key: without a state
directory the key is random and lives in memory only.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

KEY_BYTES = 32
CHECK_EVERY = 1.0


class PseudonymKeys:
    def __init__(self, path: str | os.PathLike | None, period: float = 86400.0, *, rotate: bool = True,
                 now=time.time):
        self.path = Path(path) if path is not None else None
        if self.path is not None and not self.path.parent.is_dir():
            self.path = None            # no state directory (an embedded test): a memory-only key
        self.period, self.rotate, self.now = period, rotate, now
        self._key = b""
        self._mtime = -1.0
        self._checked = -1e18
        self.rotations = 0
        self.current()

    def current(self) -> bytes:
        """The key in force now (rotating it first if its period is over)."""
        t = self.now()
        if self._key and t - self._checked < CHECK_EVERY:
            return self._key
        self._checked = t
        if self.path is None:
            if not self._key:
                self._key = secrets.token_bytes(KEY_BYTES)
            return self._key
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if self.rotate and (st is None or t - st.st_mtime >= self.period or st.st_size < 16):
            self._write_new()
            st = self.path.stat()
        if st is not None and st.st_mtime != self._mtime:
            data = self.path.read_bytes()
            if len(data) >= 16:
                self._key, self._mtime = data, st.st_mtime
        if not self._key:       # a worker before the main process wrote one: never a fixed key
            self._key = secrets.token_bytes(KEY_BYTES)
        return self._key

    def age(self) -> float:
        """Seconds since the key in force was made (0 for an in-memory key)."""
        return max(0.0, self.now() - self._mtime) if self._mtime >= 0 else 0.0

    def _write_new(self) -> None:
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.utime(self.path, (self.now(), self.now()))
        self.rotations += 1
