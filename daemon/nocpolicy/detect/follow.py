"""Follow a log file like ``tail -F``: survive rename+create and copytruncate rotation.

:meth:`Follower.poll` is synchronous and returns the complete lines written since
the last poll; the caller polls on a timer. Rules (written down in docs/detection.md):

* the first time the file is opened at start-up, reading starts at its end (old
  lines are history, not new lookups); a file that appears later (after a
  rotation or created late) is read from its beginning;
* rename + create (logrotate's default): the old file is read to its end, then the
  new file from its beginning -- no line lost, none read twice; while the name is
  missing (renamed, not yet re-created) the old file is still followed. Lines the
  resolver writes to the old file after the new one appeared and was picked up
  are missed (reload the resolver right after creating the file, as logrotate does);
* copytruncate: the file shrinking below the read position, or the bytes just
  before it no longer being the ones read (truncated, then regrown past the old
  position before the next poll), means it was truncated; reading restarts at 0. Lines written between the last poll and the
  copy are in the rotated copy only (the same limit as ``tail -F``);
* a partial last line waits for its newline (or for a rotation, which ends it).
"""

from __future__ import annotations

import os

MAX_READ = 4 << 20     # per poll, so one huge burst cannot stall the event loop
TAIL = 64


class Follower:
    def __init__(self, path: str, *, from_end: bool = True):
        self.path = path
        self._from_end = from_end
        self._f = None
        self._ident: tuple[int, int] | None = None
        self._partial = b""
        self._tail = b""                # the last bytes read, to notice a truncate + regrow
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
        self._f, self._ident, self._tail = f, (st.st_dev, st.st_ino), b""
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
        try:
            st = os.stat(self.path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            ident, st = None, None
        if ident == self._ident and (st.st_size < self._f.tell() or not self._same_tail()):
            self.truncations += 1          # copytruncate: start again at the beginning
            self._f.seek(0)
            self._partial = self._tail = b""
        self._read(out)
        if ident is not None and ident != self._ident:
            # a new file took the name: the old one is read to its end (above), then the new one
            self._read(out)
            if self._partial:
                out.append(self._partial)
                self._partial = b""
            self.close()
            self.rotations += 1
            if self._open(at_end=False):
                self._read(out)
        # ident None: renamed or deleted and not re-created yet: keep following the old file
        self.lines += len(out)
        return [b.decode("utf-8", "replace") for b in out]

    def _same_tail(self) -> bool:
        """The bytes just before the read position are still the ones read (else: truncated and regrown)."""
        pos, tail = self._f.tell(), self._tail
        if not tail or pos < len(tail):
            return True
        try:
            return os.pread(self._f.fileno(), len(tail), pos - len(tail)) == tail
        except OSError:
            return True

    def _read(self, out: list[bytes]) -> None:
        data = self._f.read(MAX_READ) if self._f is not None else b""
        if not data:
            return
        self._tail = (self._tail + data)[-TAIL:]
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out.extend(line.rstrip(b"\r") for line in lines if line.strip())
