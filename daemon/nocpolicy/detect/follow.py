"""Follow a log file like ``tail -F``: survive rename+create and copytruncate rotation.

:meth:`Follower.poll` is synchronous and returns the complete lines written since
the last poll; the caller polls on a timer. Rules (written down in docs/detection.md):

* the first time the file is opened at start-up, reading starts at its end (old
  lines are history, not new lookups); a file that appears later (after a
  rotation or created late) is read from its beginning;
* rename + create (logrotate's default): the old file is read to its end, then the
  new file from its beginning -- no line lost, none read twice;
* copytruncate: the file shrinking below the read position means it was
  truncated; reading restarts at 0. Lines written between the last poll and the
  copy are in the rotated copy only (the same limit as ``tail -F``);
* a partial last line waits for its newline (or for a rotation, which ends it).
"""

from __future__ import annotations

import os

MAX_READ = 4 << 20     # per poll, so one huge burst cannot stall the event loop


class Follower:
    def __init__(self, path: str, *, from_end: bool = True):
        self.path = path
        self._from_end = from_end
        self._f = None
        self._ident: tuple[int, int] | None = None
        self._partial = b""
        self.rotations = 0
        self.truncations = 0
        self.lines = 0

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _open(self, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        except OSError:
            return False
        st = os.fstat(f.fileno())
        self._f, self._ident = f, (st.st_dev, st.st_ino)
        if at_end:
            f.seek(0, os.SEEK_END)
        return True

    def poll(self) -> list[str]:
        out: list[bytes] = []
        if self._f is None:
            if not self._open(at_end=self._from_end):
                self._from_end = False     # created later: read it whole
                return []
            self._from_end = False
        self._read(out)
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident, st = None, None
        if ident != self._ident:
            # rotated away (renamed or deleted): finish the old file, then take the new one
            self._read(out)
            if self._partial:
                out.append(self._partial)
                self._partial = b""
            self.close()
            if ident is not None:
                self.rotations += 1
                if self._open(at_end=False):
                    self._read(out)
        elif st is not None and st.st_size < self._f.tell():
            self.truncations += 1
            self._f.seek(0)
            self._partial = b""
            self._read(out)
        self.lines += len(out)
        return [b.decode("utf-8", "replace") for b in out]

    def _read(self, out: list[bytes]) -> None:
        data = self._f.read(MAX_READ) if self._f is not None else b""
        if not data:
            return
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out.extend(line.rstrip(b"\r") for line in lines if line.strip())
