"""List sources: local files and http(s) URLs, last-good copies, shrink guard, runtime additions.

For each policy list, :class:`ListManager` keeps a :class:`ListState` (entries,
last success, failures, last error). Loading a source:

1. fetch the bytes (file read / HTTP GET, in a thread);
2. unchanged content (same SHA-256) and same list settings -> keep the compiled list;
3. parse it (in a thread) into a new index; if it shrinks by more than the list's
   ``max_shrink`` fraction, refuse it and keep the old copy (reported);
4. save it as the last-good copy under ``<state-dir>/dns-lists/<id>`` so a restart
   with an unreachable source still starts with the list.

A failed fetch keeps the list in force (or falls back to the last-good copy at
start). Runtime additions (``list.update``, threat-intel feeds) live in the state
store and are re-applied on top of every new copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import lagtrace
from ..clock import monotonic, utcnow, wall
from ..errors import NocpolicyError
from ..store import Store
from .formats import domain, parse
from .listbuild import CHILD_MIN_BYTES, ChildFailed, parse_in_child
from .lists import CompiledList, DomainIndex

log = logging.getLogger(__name__)

MIGRATIONS = (
    """
    CREATE TABLE dns_list_additions (
        list   TEXT NOT NULL,
        name   TEXT NOT NULL,
        actor  TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        ts     TEXT NOT NULL,
        PRIMARY KEY (list, name)
    );
    """,
)

HTTP_TIMEOUT = 30.0
RELOAD_PAUSE = 0.001      # per ~64 KB parsed while serving: ~0.25 s more for a million names
MAX_SOURCE_BYTES = 128 * 1024 * 1024   # default max_size (after gzip is undone)
FETCH_DEADLINE = 300.0                  # default fetch_timeout: the whole fetch, redirects included
MAX_REDIRECTS = 3                       # hops; https never redirects down to http


class SourceError(NocpolicyError):
    pass


@dataclass
class ListState:
    id: str
    source: str
    entries: int = 0
    sha256: str | None = None
    last_success: float | None = None
    last_attempt: float | None = None
    failures: int = 0
    last_error: str | None = None
    from_copy: bool = False
    report: dict = field(default_factory=dict)
    runtime: int = 0

    def as_dict(self) -> dict:
        def iso(t):
            return (dt.datetime.fromtimestamp(t, dt.UTC).isoformat() if t else None)
        return {"list": self.id, "source": self.source, "entries": self.entries,
                "runtime_additions": self.runtime, "sha256": self.sha256,
                "last_success": iso(self.last_success), "last_attempt": iso(self.last_attempt),
                "failures": self.failures, "last_error": self.last_error, "from_last_good_copy": self.from_copy,
                "parse": self.report}


@dataclass(frozen=True)
class FetchLimits:
    """What one fetch may cost: bytes after gzip is undone, wall time, redirects."""

    max_bytes: int = MAX_SOURCE_BYTES
    deadline: float = FETCH_DEADLINE
    redirects: int = MAX_REDIRECTS

    @classmethod
    def of(cls, bl) -> FetchLimits:
        return cls(bl.max_size, bl.fetch_timeout)


def fetch(source: str, policy_dir: str, limits: FetchLimits = FetchLimits()) -> bytes:
    """The raw bytes of a source (blocking: run in a thread). gzip is undone, within ``limits``."""
    try:
        if "://" in source:
            data = _read_http(source, limits)
        else:
            with open(Path(policy_dir) / source, "rb") as f:
                data = f.read(limits.max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"{source}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise SourceError(f"{source}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise SourceError(f"{source}: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > limits.max_bytes:
        raise SourceError(f"{source}: larger than max_size ({limits.max_bytes} bytes)")
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data, limits.max_bytes, source)
    return data


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    """At most ``max_redirections`` hops, http(s) only, never from https down to http."""

    def __init__(self, limit: int):
        self.max_redirections = limit
        self.max_repeats = min(self.max_repeats, limit)

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if new.scheme not in ("http", "https") or (req.type == "https" and new.scheme != "https"):
            raise urllib.error.HTTPError(req.full_url, code, f"redirect to {new.scheme}:// refused",
                                         headers, fp)
        if len(getattr(req, "redirect_dict", {})) >= self.max_redirections:
            raise urllib.error.HTTPError(req.full_url, code,
                                         f"more than {self.max_redirections} redirects", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _read_http(source: str, limits: FetchLimits) -> bytes:
    """GET with an overall deadline (checked between reads; one read waits at most the
    smaller of HTTP_TIMEOUT and the deadline) and a size cap on the raw body."""
    end = monotonic() + limits.deadline
    opener = urllib.request.build_opener(_LimitedRedirects(limits.redirects))
    req = urllib.request.Request(source, headers={"User-Agent": "nocpolicy"})
    out = bytearray()
    with opener.open(req, timeout=min(HTTP_TIMEOUT, limits.deadline)) as resp:
        while True:
            if monotonic() > end:
                raise SourceError(f"{source}: not fetched within fetch_timeout ({limits.deadline:g}s)")
            chunk = resp.read1(65536)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limits.max_bytes:
                return bytes(out)          # refused by the caller, with the size in the message


def gunzip(data: bytes, limit: int, source: str = "source") -> bytes:
    """Undo gzip (several members allowed), refusing output beyond ``limit`` bytes as soon
    as it is reached: a gzip bomb costs at most ``limit`` bytes of memory."""
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    buf = data
    try:
        while True:
            out += d.decompress(buf, limit + 1 - len(out))
            if len(out) > limit:
                raise SourceError(f"{source}: larger than max_size ({limit} bytes) once gunzipped")
            if d.eof:
                buf = d.unused_data
                if not buf.strip(b"\0"):
                    return bytes(out)
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                buf = d.unconsumed_tail
                if not buf:
                    raise SourceError(f"{source}: bad gzip data: truncated")
    except zlib.error as exc:
        raise SourceError(f"{source}: bad gzip data: {exc}") from None


class ListManager:
    """Owns every list's state, its compiled copy and its runtime additions."""

    def __init__(self, store: Store, state_dir: str):
        self._pool: ThreadPoolExecutor | None = None
        self.store = store
        self.copy_dir = Path(state_dir) / "dns-lists"
        store.migrate("dns.lists", MIGRATIONS)
        self.states: dict[str, ListState] = {}
        self.compiled: dict[str, CompiledList] = {}
        self._conf: dict[str, object] = {}
        self._base: dict[str, set[str]] = {}   # runtime additions also present in the source
        self._staged: dict[str, ListState] = {}
        self._staged_base: dict[str, set[str]] = {}

    # -- runtime additions -------------------------------------------------------

    def additions(self, list_id: str) -> list[str]:
        return [r["name"] for r in self.store.all("SELECT name FROM dns_list_additions WHERE list=? "
                                                  "ORDER BY name", (list_id,))]

    def update(self, lst: CompiledList, add: list[str], remove: list[str], *, actor: str,
               reason: str) -> dict:
        """Add/remove runtime entries (subtree semantics), persisted + audited, applied in place."""
        now = utcnow().isoformat()
        have = set(self.additions(lst.id))
        added = [n for n in add if n not in have]
        removed = [n for n in remove if n in have]
        not_runtime = [n for n in remove if n not in have]
        with self.store.transaction() as tx:
            tx.executemany("INSERT OR IGNORE INTO dns_list_additions (list, name, actor, reason, ts) "
                           "VALUES (?,?,?,?,?)", [(lst.id, n, actor, reason, now) for n in added])
            tx.executemany("DELETE FROM dns_list_additions WHERE list=? AND name=?",
                           [(lst.id, n) for n in removed])
            self.store.audit(actor, "dns.list.update", f"list:{lst.id}", None,
                             {"added": added, "removed": removed, "reason": reason}, db=tx)
        self.apply(lst, added, removed)
        st = self.states.get(lst.id)
        if st is not None:
            st.runtime = len(have) + len(added) - len(removed)
        return {"list": lst.id, "added": added, "removed": removed, "not_runtime_entries": not_runtime,
                "entries": len(lst.index)}

    def apply(self, lst: CompiledList, added: list[str], removed: list[str]) -> None:
        """Apply runtime entries already recorded (by :meth:`update`, or by the main process
        for a worker) to the list in place; a name also in the list's source stays."""
        base = self._base.get(lst.id, set())
        for n in added:
            lst.index.subtree.add(n)
        for n in removed:
            if n not in base:
                lst.index.subtree.discard(n)
        st = self.states.get(lst.id)
        if st is not None:
            st.runtime = max(0, st.runtime + len(added) - len(removed))
            st.entries = len(lst.index)

    # -- loading -----------------------------------------------------------------

    async def build(self, bl, policy_dir: str, *, background: bool = False) -> CompiledList:
        """A compiled list for policy list ``bl`` (reuses the current one when nothing changed)."""
        # work on a copy: the state is staged and only adopted with the list (commit), so a
        # policy refused by another component leaves nothing half-applied here
        cur = self.states.get(bl.id)
        st = dataclasses.replace(cur, report=dict(cur.report)) if cur else ListState(bl.id, bl.source)
        st.source = bl.source
        st.last_attempt = wall()
        self._staged[bl.id] = st
        old = self.compiled.get(bl.id)
        same_conf = old is not None and self._conf.get(bl.id) == bl
        got = await self._fetch_or_copy(bl, st, policy_dir, old if same_conf else None)
        if isinstance(got, CompiledList):
            return got
        data, sha, from_copy = got
        if data is None:  # settings changed, source unreachable, no copy: rebuild from the old entries
            if old is None:
                return self._empty(bl)
            index, sha, report = old.index, st.sha256, st.report
        else:
            if same_conf and sha == st.sha256:
                st.last_success = wall()
                if not from_copy:
                    st.last_error = None
                return old
            index, report = await self._parse_copy(bl, data, background)
            refused = _refusal(bl, st, len(index), from_copy)
            if refused:
                st.failures += 1
                st.last_error = refused
                log.warning("list %s: %s", bl.id, refused)
                if old is None:
                    return self._empty(bl)
                return old if same_conf else self._recompile(bl, old.index)
            if not from_copy:
                lagtrace.mark("write copy")
                await asyncio.to_thread(self._write_copy, bl.id, data)
                lagtrace.mark("write copy done")
        await self._add_runtime(bl, index)
        lagtrace.mark("runtime entries added")
        st.sha256, st.report, st.from_copy = sha, report, from_copy
        st.entries = len(index)
        if not from_copy:
            st.last_success = wall()
            st.last_error = None
        elif st.last_success is None:
            st.last_success = self._copy_time(bl.id)
        return self._recompile(bl, index)

    async def _parse_copy(self, bl, data: bytes, background: bool) -> tuple[DomainIndex, dict]:
        """(index, report): at start-up in the list thread (nothing is served yet); while
        serving, a list of CHILD_MIN_BYTES or more in a child process, the index built on the
        loop a slice at a time (see listbuild.py), or in the thread if the child fails."""
        if background and len(data) >= CHILD_MIN_BYTES:
            path = None
            try:
                lagtrace.mark("child parse")
                path = await asyncio.to_thread(self._hand_over, bl.id, data)
                out = await parse_in_child(bl.format, str(path))
                lagtrace.mark("child parse done")
                return out
            except (OSError, ChildFailed) as exc:
                log.warning("list %s: %s; parsing in a thread instead", bl.id, exc)
            finally:
                if path is not None:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
        index, rep = await self._run(_parse, bl.format, data, RELOAD_PAUSE if background else 0.0)
        return index, rep.as_dict()

    async def _fetch_or_copy(self, bl, st: ListState, policy_dir: str, keep: CompiledList | None):
        """(data, sha, from_copy), or the list to keep as it is when the source failed."""
        try:
            data, sha = await self._run(_fetch_hashed, bl.source, policy_dir, FetchLimits.of(bl))
            return data, sha, False
        except SourceError as exc:
            st.failures += 1
            st.last_error = str(exc)
            log.warning("list %s: %s; keeping the last good copy", bl.id, exc)
        if keep is not None:
            return keep
        data = await asyncio.to_thread(self._read_copy, bl.id, bl.max_size)
        sha = hashlib.sha256(data).hexdigest() if data is not None else None
        return data, sha, True

    async def _add_runtime(self, bl, index: DomainIndex) -> None:
        """Re-apply the runtime additions on top of a new copy."""
        base_names = set()
        adds = await asyncio.to_thread(self.additions, bl.id)   # the store lock may be busy
        for n in adds:
            if n in index.subtree:
                base_names.add(n)
            else:
                index.subtree.add(n)
        self._staged_base[bl.id] = base_names
        self._staged[bl.id].runtime = len(adds)

    async def _run(self, fn, *args):
        if self._pool is None:
            # one thread, normal priority: a niced thread holding the GIL while descheduled
            # would stall the event loop (priority inversion); the parser yields the GIL instead
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dns-lists")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def adopt(self, policy_lists, compiled: dict[str, CompiledList]) -> None:
        """Commit: these compiled lists are now in force (sync, cannot fail)."""
        self.compiled = dict(compiled)
        self._conf = {bl.id: bl for bl in policy_lists}
        for lid in compiled:
            if lid in self._staged:
                self.states[lid] = self._staged.pop(lid)
            if lid in self._staged_base:
                self._base[lid] = self._staged_base.pop(lid)
        self._staged.clear()
        self._staged_base.clear()
        for gone in set(self.states) - set(compiled):
            del self.states[gone]

    def _recompile(self, bl, index: DomainIndex) -> CompiledList:
        allow = DomainIndex(subtree=set(bl.allow))
        return CompiledList(bl.id, bl.cls, bl.action, index, allow,
                            str(bl.sinkhole_a) if bl.sinkhole_a else None,
                            str(bl.sinkhole_aaaa) if bl.sinkhole_aaaa else None)

    def _empty(self, bl) -> CompiledList:
        return self._recompile(bl, DomainIndex())

    # -- last-good copies --------------------------------------------------------

    def _copy_path(self, list_id: str) -> Path:
        return self.copy_dir / f"{list_id}.txt"

    def _hand_over(self, list_id: str, data: bytes) -> Path:
        """The list for the child parser, in a file of its own (0600; --workers processes
        share the directory)."""
        self.copy_dir.mkdir(parents=True, exist_ok=True)
        return Path(_own_file(self.copy_dir, f"{list_id}.", ".parse", data))

    def _write_copy(self, list_id: str, data: bytes) -> None:
        self.copy_dir.mkdir(parents=True, exist_ok=True)
        path = self._copy_path(list_id)
        _replace_with(path, data)
        _replace_with(path.with_suffix(".json"), json.dumps({"saved": wall()}).encode())

    def _read_copy(self, list_id: str, max_size: int) -> bytes | None:
        try:
            with open(self._copy_path(list_id), "rb") as f:
                data = f.read(max_size + 1)
        except OSError:
            return None
        return data if len(data) <= max_size else None

    def _copy_time(self, list_id: str) -> float | None:
        try:
            return json.loads(self._copy_path(list_id).with_suffix(".json").read_text())["saved"]
        except (OSError, ValueError, KeyError):
            return None


def _own_file(directory: Path, prefix: str, suffix: str, data: bytes) -> str:
    """A new file (0600, a name no other writer has) in ``directory`` holding ``data``."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with open(fd, "wb") as f:
            f.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return name


def _replace_with(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over ``path``. The temporary file is this
    writer's own: ``--workers`` processes reload at once and save the same last-good copy (one
    shared name made the later rename fail and that worker refuse the reload)."""
    name = _own_file(path.parent, f"{path.name}.", ".tmp", data)
    try:
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


def _fetch_hashed(source: str, policy_dir: str, limits: FetchLimits) -> tuple[bytes, str]:
    lagtrace.mark(f"fetch {source}")
    data = fetch(source, policy_dir, limits)
    lagtrace.mark("fetched, sha256")
    out = data, hashlib.sha256(data).hexdigest()
    lagtrace.mark("fetch done")
    return out


def _parse(fmt: str, data: bytes, pause: float = 0.0):
    lagtrace.mark("decode")
    text = data.decode("utf-8", errors="replace")
    lagtrace.mark("parse")
    out = parse(fmt, text, pause)
    lagtrace.mark("parse done")
    return out


def _refusal(bl, st: ListState, entries: int, from_copy: bool) -> str | None:
    """Why a freshly parsed copy must not replace the list in force (None: it may)."""
    if entries > bl.max_entries:
        return (f"refused: {bl.source} has {entries} entries, more than max_entries {bl.max_entries}; "
                "keeping the old copy")
    prev = st.entries - st.runtime if st.entries else 0
    if prev and entries < prev * (1.0 - bl.max_shrink) and not from_copy:
        return (f"refused: {bl.source} would shrink the list from {prev} to {entries} "
                f"entries (more than max_shrink {bl.max_shrink:.0%}); keeping the old copy")
    return None


def check_names(names) -> tuple[list[str], list[str]]:
    """(normalized valid names, invalid inputs) for list.update."""
    ok, bad = [], []
    for n in names:
        d = domain(n) if isinstance(n, str) else None
        (ok if d else bad).append(d if d else str(n))
    return ok, bad
