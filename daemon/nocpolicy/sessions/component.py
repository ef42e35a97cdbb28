"""The Sessions component: owns the live session table and the session history.

Sources (the RADIUS accounting listener, Kea lease followers) turn input into
events; the book applies them to the live table and yields store writes, which
are group-committed before a RADIUS request is answered. Loops close stale
sessions and prune history past the retention. Every change is pushed to the
subscribers area (:class:`SessionFeed`, wired in app.py), which makes it part of
the client lookup of the DNS guard in this process and in every DNS worker; a
RADIUS request is answered once its change is durable and in every worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from ..clock import SystemClock, wall  # the listener's clock: time.time(), no datetime a request
from ..component import Component
from ..control.commands import Command
from ..errors import Invalid, NocpolicyError, StoreError
from ..gcpause import gc_paused
from ..policy.fields import as_bool, as_datetime, as_id, as_str, int_range
from ..policy.sessions import SessionSettings
from ..subscribers.live import Change
from .accounting import AccountingProtocol, listen
from .book import Book
from .commit import GroupCommit
from .history import History
from .intmap import IMPLEMENTATION as INTMAP_IMPLEMENTATION
from .kea import LeaseFollower
from .metrics import SessionsCollector
from .model import Event, Live
from .table import LiveTable
from .whois import whois

log = logging.getLogger(__name__)

STALE_EVERY = 10.0
PRUNE_EVERY = 3600.0
KEA_POLL = 0.5
KEA_GRACE = 0.0              # a lease ends at its expiry time


def trim_heap() -> None:
    """Give the heap memory a bulk load freed back to the system (glibc's ``malloc_trim``;
    nothing elsewhere). A restore of a million sessions leaves tens of MB of freed chunks
    (the rows read, the columns' growth) that glibc would otherwise keep."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class SessionView(Protocol):
    """What readers (DNS guard, ACLs) may ask of the live sessions."""

    def customer_of(self, host: str) -> str | None: ...
    def contains(self, host: str) -> bool: ...


class SessionFeed(Protocol):
    """Where session changes go (the subscribers area, handed in app.py)."""

    def use_sessions(self, live: SessionView) -> None:
        """The live sessions to look client addresses up in (this process)."""

    def static_owner(self, host: str) -> str | None:
        """The customer whose static prefix holds ``host`` (conflicts: the static prefix wins)."""

    # optional: static_owner_net(family, value) -> the same for an address as (4 | 6, int)

    def sessions_changed(self, changes: Iterable[Change]) -> None:
        """Sessions started or ended, already in the live table: push to readers now
        (``changes`` is read once: it may be a generator)."""

    async def replicate_sessions(self, changes: list[Change]) -> bool:
        """Send the changes to the other processes (DNS workers); True once all applied them."""


def resolver(policy) -> Callable[[str | None], tuple[str | None, bool]]:
    """Extracted id -> (customer id, implicit?): a customer id, else a login of a customer,
    else the id itself as an implicit customer."""
    inventory = getattr(policy.customers, "inventory", None)     # a CSV inventory: read from its columns
    static = policy.customers.static if inventory is not None else policy.customers
    ids = {c.id: c.id for c in static}     # the policy's own string: shared, not copied
    logins = {login: c.id for c in static for login in c.logins}

    def resolve(extracted: str | None) -> tuple[str | None, bool]:
        if extracted is None:
            return None, False
        known = ids.get(extracted)
        if known is None and inventory is not None:
            i = inventory.index.get(extracted)
            known = inventory.ids[i] if i is not None else None
        if known is not None:
            return known, False
        cid = logins.get(extracted)
        if cid is None and inventory is not None:
            cid = inventory.login_owner(extracted)
        return (cid, False) if cid is not None else (extracted, True)
    return resolve


class Sessions(Component):
    name = "sessions"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.table = LiveTable()
        self.book = Book(self.table)
        self.book.on_change = self._changed
        self.history = History(ctx.store)
        self.settings = SessionSettings()
        self.commit = GroupCommit(self.history.write, on_failure=self._commit_failed,
                                  after_write=self._replicate, stage=self.history.stage)
        self.feed: SessionFeed | None = None
        self._unreplicated: list[Change] = []
        self._unpublished: list[Change] = []      # this process's watchers: told once per commit
        self.protocol = AccountingProtocol(lambda: self.settings.radius, self.book, self.commit,
                                           clock=wall if type(ctx.clock) is SystemClock else self._now)
        self.transport = None
        self.listen: tuple[str, int] | None = None
        self.followers: dict[str, LeaseFollower] = {}
        self.whois_counts: dict[str, int] = {}
        self._listeners: list[Callable] = []     # told of every start/stop (the fleet: upward)
        self.pruned = 0
        self._started = False

    def _now(self) -> float:
        return self.ctx.clock.now().timestamp()

    def connect(self, feed: SessionFeed) -> None:
        """Push session changes to ``feed`` (app.py wires the subscribers area here)."""
        self.feed = feed
        feed.use_sessions(self.table)
        self.book.static = feed.static_owner
        self.book.static_net = getattr(feed, "static_owner_net", None)

    def add_change_listener(self, fn: Callable) -> None:
        """Call ``fn(old, new)`` for every session that ended (old) and/or started (new)."""
        self._listeners.append(fn)

    def live_sessions(self) -> list[Live]:
        return self.table.sessions()

    def _changed(self, old: Live | None, new: Live | None) -> None:
        for fn in self._listeners:
            fn(old, new)
        if self.feed is not None:
            if old is not None:
                c = ("-", old.addrs, old.customer, old.implicit)
                self._unreplicated.append(c)
                self._unpublished.append(c)
            if new is not None:
                c = ("+", new.addrs, new.customer, new.implicit)
                self._unreplicated.append(c)
                self._unpublished.append(c)

    def _publish(self) -> None:
        """Tell this process's watchers of the changes since the last commit, in one call (was
        one call per session: a publish to every watcher per request). Runs before a commit's
        requests are answered, so an answered session is visible."""
        changes, self._unpublished = self._unpublished, []
        if changes and self.feed is not None:
            self.feed.sessions_changed(changes)

    async def _replicate(self) -> None:
        self._publish()
        changes, self._unreplicated = self._unreplicated, []
        if changes and self.feed is not None and not await self.feed.replicate_sessions(changes):
            log.warning("a DNS worker did not confirm %d session change(s) in time", len(changes))

    # -- lifecycle -------------------------------------------------------------------

    async def prepare(self, policy, change):
        s = policy.sessions
        want = s.radius.listen if s.radius else None
        new_transport = None
        if self._started and want != self.listen and want is not None:
            new_transport = await self._bind(want)     # a port in use refuses the reload
        resolve = resolver(policy)

        def commit():
            self.settings = s
            self.book.resolve = resolve
            self.book.max_active = s.max_active
            if s.radius:
                self.commit.delay = s.radius.commit_delay
            if self._started:
                if want != self.listen:
                    self._swap_transport(new_transport, want)
                self._sync_followers()
        return commit

    async def _bind(self, where: tuple[str, int]):
        try:
            return await listen(self.protocol, *where)
        except OSError as exc:
            raise NocpolicyError(f"RADIUS accounting cannot listen on {where[0]}:{where[1]}: "
                             f"{exc.strerror or exc}") from exc

    def _swap_transport(self, new, want) -> None:
        if self.transport is not None:
            self.transport.close()
        self.transport, self.listen = new, want
        if new is not None:
            self.protocol.transport = new

    async def start(self) -> None:
        log.info("live session table indexes: %s", INTMAP_IMPLEMENTATION)
        await self._restore()
        if self.feed is not None and len(self.table):        # implicit customers of restored sessions
            # a generator: no list of a million change tuples at start (read once)
            self.feed.sessions_changed(self.table.changes("+"))
        if self.settings.radius is not None:
            self._swap_transport(await self._bind(self.settings.radius.listen), self.settings.radius.listen)
        self._started = True
        self._sync_followers()
        self.tasks.spawn("commit", self.commit.run())
        self.tasks.spawn("stale", self._stale_loop())
        self.tasks.spawn("prune", self._prune_loop())
        self.tasks.spawn("kea", self._kea_loop())
        self.set_state("running" if self.settings.enabled else "disabled", self._detail())

    def _detail(self) -> str:
        parts = []
        if self.listen:
            parts.append(f"RADIUS accounting on {self.listen[0]}:{self.transport_port()}")
        if self.followers:
            parts.append(f"{len(self.followers)} Kea lease file(s)")
        return ", ".join(parts) or "no session sources configured"

    def transport_port(self) -> int | None:
        if self.transport is None:
            return None
        return self.transport.get_extra_info("sockname")[1]

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        await self.tasks.close()
        try:
            await self.commit.drain()
        except (StoreError, TimeoutError) as exc:
            log.error("session history: final commit failed: %s", exc)
        self.history.close()
        self.set_state("stopped")

    def _commit_failed(self, exc: Exception) -> None:
        """Requests of the failed commit were not answered: forget them and reload the
        live table from the store, so their retransmissions are recorded afresh."""
        self.protocol.forget_pending()
        self._publish()
        self.tasks.spawn("resync", self._resync())

    async def _restore(self) -> None:
        """Load the sessions open in the store into the live table, a chunk at a time (read in
        a thread, added here: the table has one owner, this loop)."""
        rows = self.history.open_rows()
        self.table.reserve(await asyncio.to_thread(next, rows))
        while True:
            chunk = await asyncio.to_thread(next, rows, None)
            if not isinstance(chunk, list):
                self.book.next_id = max(self.book.next_id, chunk or 1)
                trim_heap()
                return
            with gc_paused():            # up to millions of sessions: see gcpause
                self.book.restore_rows(chunk)

    async def _resync(self) -> None:
        gone = list(self.table.changes("-"))
        self.table.clear()
        await self._restore()
        if self.feed is not None:
            changes = gone + list(self.table.changes("+"))
            self._unreplicated += changes
            self.feed.sessions_changed(changes)

    # -- sources ---------------------------------------------------------------------

    def apply(self, ev: Event) -> None:
        """An event from a source that needs no answer (Kea): record it."""
        ops = self.book.apply(ev)
        if ops:
            self.commit.submit(ops)

    def _sync_followers(self) -> None:
        want = {k.path: k for k in self.settings.kea}
        for path in list(self.followers):
            if path not in want or self.followers[path].spec != want[path]:
                del self.followers[path]
        for path, spec in want.items():
            if path not in self.followers:
                f = LeaseFollower(spec, self.apply, self._now)
                f.start()
                self.followers[path] = f

    async def _kea_loop(self) -> None:
        while True:
            for f in list(self.followers.values()):
                f.poll()
            await asyncio.sleep(KEA_POLL)

    async def _stale_loop(self) -> None:
        while True:
            r = self.settings.radius
            await asyncio.sleep(min(STALE_EVERY, max(0.5, (r.stale_grace if r else STALE_EVERY) / 2)))
            self.sweep()

    def sweep(self) -> None:
        r = self.settings.radius
        grace = {"radius": r.stale_grace if r else 600.0, "kea4": KEA_GRACE, "kea6": KEA_GRACE}
        ops = self.book.stale(self._now(), grace)
        if ops:
            self.commit.submit(ops)

    async def _prune_loop(self) -> None:
        while True:
            before = self._now() - self.settings.retention
            n = await asyncio.to_thread(self.history.prune, before)
            self.pruned += n
            if n:
                log.info("session history: pruned %d session(s) that ended before %s", n,
                         dt.datetime.fromtimestamp(before, dt.UTC).isoformat(timespec="seconds"))
                continue                 # more may be due: go on without waiting
            await asyncio.sleep(PRUNE_EVERY)

    # -- wiring ----------------------------------------------------------------------

    def view(self) -> SessionView:
        return self.table

    def collectors(self) -> list:
        return [SessionsCollector(self)]

    def status(self) -> dict:
        out = super().status()
        out["active"] = len(self.table)
        out["commits"] = self.commit.commits
        out["kea"] = {p: {**f.counts, "error": f.last_error} for p, f in self.followers.items()}
        return out

    def commands(self) -> list[Command]:
        return [
            Command("whois", self._cmd_whois, "who held an address (and port, behind CGNAT) at a time",
                    mutating=False),
            Command("sessions", self._cmd_sessions, "sessions of a customer, or active ones", mutating=False),
        ]

    async def _cmd_whois(self, args, inv) -> dict:
        address = args.req("address", as_str)
        tz = self.ctx.policy().settings.timezone
        at = args.get("at", lambda n, p=None: as_datetime(n, p, tz), None)
        port = args.get("port", int_range(0, 65535), None)
        args.check()
        ts = at.timestamp() if at is not None else self._now()
        try:
            out = await asyncio.to_thread(whois, self.history, self.settings.nat_pools, address, ts, port)
        except ValueError as exc:
            self._count_whois("error")
            raise Invalid(str(exc), field="address") from None
        self._count_whois("unattributed" if "unattributed" in out else "found")
        return out

    def whois_at(self, address: str, ts: float, port: int | None) -> dict:
        """``whois`` for another area (advisories, exports: ``Attribution``); blocking, run it in
        a thread. ValueError for a bad address."""
        return whois(self.history, self.settings.nat_pools, address, ts, port)

    def _count_whois(self, result: str) -> None:
        self.whois_counts[result] = self.whois_counts.get(result, 0) + 1

    async def _cmd_sessions(self, args, inv) -> dict:
        customer = args.get("customer", as_id, None)
        active = args.get("active", as_bool, False) or False
        limit = args.get("limit", int_range(1, 10_000), 100) or 100
        args.check()
        rows = await asyncio.to_thread(self.history.list, customer=customer, active=active, limit=limit)
        return {"sessions": rows, "active": len(self.table)}
