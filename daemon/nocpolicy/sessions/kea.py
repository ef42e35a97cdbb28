"""Kea memfile lease files (CSV, DHCPv4 and DHCPv6 with prefix delegation) as sessions.

Kea appends a line for every lease change: a new or renewed lease, a release
(``valid_lifetime`` 0) or a reclaimed/declined one (``state`` 1 or 2). The
follower reads new complete lines as they appear (a line cut mid-way waits for
its end) and turns each into a start or stop of the session
``(file, address|client)``. Kea's lease-file cleanup (LFC) moves the file aside
(``.2``) and starts a new one: a new inode or a shorter file is read again from
the start, and at start-up the LFC outputs (``.1``, ``.2``) are read first, so
leases written before the last rotation are known. Reading a lease twice is
harmless: the book treats a known session as a renewal.
"""

from __future__ import annotations

import csv
import ipaddress
import logging
import os
from collections import Counter
from collections.abc import Callable

from ..policy.sessions import KeaFile
from .model import Event, SessionInfo, net_of

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024          # a longer "line" is not a lease: skipped
READ_CHUNK = 4 * 1024 * 1024  # bytes read per poll at most (a big file is read over several polls)
V4 = ("address", "hwaddr", "client_id", "valid_lifetime", "expire", "subnet_id")
V6 = ("address", "duid", "valid_lifetime", "expire", "subnet_id", "pref_lifetime", "lease_type", "iaid",
      "prefix_len")
ENDED = {1: "declined", 2: "expired-reclaimed"}


class BadLine(ValueError):
    pass


def columns(header: str) -> tuple[str, dict[str, int]]:
    """The family (``kea4``/``kea6``) and column index of a lease file header."""
    cols = [c.strip() for c in header.split(",")]
    idx = {c: i for i, c in enumerate(cols)}
    if all(c in idx for c in V6):
        return "kea6", idx
    if all(c in idx for c in V4):
        return "kea4", idx
    raise BadLine(f"not a Kea lease file header: {header[:80]!r}")


def lease_event(kind: str, idx: dict[str, int], line: str, spec: KeaFile, now: float) -> Event | None:
    """One lease line -> a start or stop event (None for a line that is not a session)."""
    try:
        row = next(csv.reader([line]))
    except csv.Error as exc:
        raise BadLine(str(exc)) from None
    if len(row) < len(idx):
        raise BadLine(f"{len(row)} columns, the header has {len(idx)}")

    def col(name: str, default: str = "") -> str:
        i = idx.get(name)
        return row[i] if i is not None else default
    try:
        valid, expire = int(col("valid_lifetime")), int(col("expire"))
        state = int(col("state", "0") or 0)
        if kind == "kea6":
            if col("lease_type") not in ("0", "2"):
                return None                     # temporary addresses (IA_TA) are not sessions
            net = net_of(ipaddress.IPv6Network((col("address"), int(col("prefix_len") or 128)), strict=False))
        else:
            net = net_of(ipaddress.IPv4Network(col("address")))
    except ValueError as exc:
        raise BadLine(str(exc)) from None
    client = col("hwaddr") or col("client_id") if kind == "kea4" else col("duid")
    value = {"hostname": col("hostname"), "client_id": col("client_id"), "hwaddr": col("hwaddr"),
             "duid": col("duid")}[spec.customer_from.attribute]
    info = SessionInfo(kind, f"kea:{spec.path}", f"{col('address')}|{client}",
                       spec.customer_from.extract(value.rstrip(".")), login=col("hostname"), calling=client,
                       addrs=(net,), interval=float(valid))
    cltt = float(expire - valid)
    if valid == 0 or state in ENDED:
        return Event("stop", info, float(expire) if valid == 0 else cltt,
                     reason="released" if valid == 0 else ENDED[state])
    if expire <= now:
        return Event("stop", info, float(expire), reason="expired")
    return Event("start", info, cltt)


class LeaseFollower:
    """Follows one lease file; :meth:`poll` returns the events of the lines added since."""

    def __init__(self, spec: KeaFile, on_event: Callable[[Event], None], clock: Callable[[], float]):
        self.spec = spec
        self.on_event = on_event
        self.clock = clock
        self.counts: Counter = Counter()       # lines, bad, rotations, truncations
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._lineno = 0
        self._buf = b""
        self._hdr: tuple[str, dict[str, int]] | None = None
        self.last_error = ""

    def start(self) -> None:
        """Read the LFC outputs (older leases) before the live file."""
        for suffix in (".1", ".2", ".completed"):
            path = self.spec.path + suffix
            if os.path.exists(path):
                self._read_whole(path)

    def _read_whole(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self.last_error = f"{path}: {exc.strerror}"
            return
        hdr = None
        lines = data.split(b"\n")
        lines.pop()                      # after the last newline: empty, or a line cut mid-way
        for n, raw in enumerate(lines, start=1):
            if raw.strip():
                hdr = self._line(path, n, raw, hdr)

    def poll(self) -> int:
        """Read what was appended (or the whole file after an LFC rewrite); returns lines read."""
        path = self.spec.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.last_error = f"{path}: not found"
            return 0
        except OSError as exc:
            self.last_error = f"{path}: {exc.strerror}"
            return 0
        ino = (st.st_dev, st.st_ino)
        if ino != self._ino or st.st_size < self._offset:
            if self._ino is not None:
                self.counts["rotations" if ino != self._ino else "truncations"] += 1
            self._ino, self._offset, self._lineno, self._buf, self._hdr = ino, 0, 0, b"", None
        if st.st_size == self._offset:
            return 0
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(READ_CHUNK)
        except OSError as exc:
            self.last_error = f"{path}: {exc.strerror}"
            return 0
        self._offset += len(chunk)
        data = self._buf + chunk
        lines = data.split(b"\n")
        self._buf = lines.pop()          # an unfinished line waits for its end
        if len(self._buf) > MAX_LINE:
            self.counts["bad"] += 1
            self._buf = b""
        for raw in lines:
            self._lineno += 1
            if raw.strip():
                self._hdr = self._line(path, self._lineno, raw, self._hdr)
        self.last_error = ""
        return len(lines)

    def _line(self, path: str, n: int, raw: bytes, hdr):
        text = raw.decode("utf-8", "replace").rstrip("\r")
        try:
            if hdr is None:
                return columns(text)
            ev = lease_event(hdr[0], hdr[1], text, self.spec, self.clock())
        except BadLine as exc:
            self.counts["bad"] += 1
            log.warning("kea lease file %s:%d: %s", path, n, exc)
            return hdr
        self.counts["lines"] += 1
        if ev is not None:
            self.on_event(ev)
        return hdr
