"""Group commit: gather the writes of a few milliseconds of requests, make them
durable in one transaction (one fsync), let ``after_write`` finish (the DNS
workers confirm the changes), then run each request's ``done`` (send its
Accounting-Response). A failed commit runs nobody's ``done``: the NAS
retransmits, and ``on_failure`` lets the owner resynchronise from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from ..errors import StoreError
from .model import Ops

log = logging.getLogger(__name__)

MAX_PENDING = 100_000        # requests waiting for a commit; beyond, new ones are dropped
STAGE_MAX = 400              # writes a commit runs on the event loop at most (see _small)


def _small(ops: Ops) -> bool:
    """Few enough writes to run on the event loop (~13 us a Start): a storm's large batches
    go to a thread whole, so the loop is never held more than a few milliseconds."""
    return len(ops.inserts) + len(ops.touches) + len(ops.closes) <= STAGE_MAX


class GroupCommit:
    def __init__(self, write: Callable[[Ops], None], *, delay: float = 0.003,
                 on_failure: Callable[[Exception], None] = lambda exc: None,
                 after_write: Callable[[], Awaitable[None]] | None = None,
                 stage: Callable[[Ops], Callable[[], None] | None] | None = None):
        self._write = write
        # stage(ops): run the writes on the event loop and return what makes them durable (run
        # in a thread), or None to take write() in a thread instead (History.stage)
        self._stage = stage
        self._after_write = after_write      # e.g. wait until every DNS worker has the changes
        self.delay = delay
        self._on_failure = on_failure
        self.ops = Ops()                     # the writes of the next commit (sources may append here)
        self._done: list[Callable[[], None]] = []
        self._count = 0                      # requests in the next commit
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.commits = 0
        self.failures = 0
        self.committed_requests = 0

    def full(self) -> bool:
        return self._count >= MAX_PENDING

    def submit(self, ops: Ops | None, done: Callable[[], None] | None = None) -> None:
        """One request: its writes (None or :attr:`ops` itself when they were appended there)
        and what to run once they are durable."""
        if ops is not None and ops is not self.ops:
            self.ops.extend(ops)
        if done is not None:
            self._done.append(done)
        self._count += 1
        self._idle.clear()
        self._wake.set()

    def when_durable(self, done: Callable[[], None]) -> None:
        """Run ``done`` once the writes gathered so far are durable (with the next commit), like
        a request's ``done``, without counting a request (one callback for many requests)."""
        self._done.append(done)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        merged, done, count = self.ops, self._done, self._count
        if not count:
            self._idle.set()
            return
        self.ops, self._done, self._count = Ops(), [], 0
        try:
            if merged:
                finish = self._stage(merged) if self._stage is not None and _small(merged) else None
                await asyncio.to_thread(finish if finish is not None else partial(self._write, merged))
            if self._after_write is not None:
                await self._after_write()
        except StoreError as exc:
            self.failures += 1
            log.error("session history: commit of %d request(s) failed, not answered: %s", count, exc)
            self._on_failure(exc)
        else:
            self.commits += 1
            self.committed_requests += count
            for fn in done:
                fn()
        if not self._count:
            self._idle.set()

    async def drain(self) -> None:
        """Commit what is pending (at stop; the caller bounds the time)."""
        if self._count:
            await self.flush()
