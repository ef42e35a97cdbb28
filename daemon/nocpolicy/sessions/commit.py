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

from ..errors import StoreError
from .model import Ops

log = logging.getLogger(__name__)

MAX_PENDING = 100_000        # requests waiting for a commit; beyond, new ones are dropped


class GroupCommit:
    def __init__(self, write: Callable[[Ops], None], *, delay: float = 0.003,
                 on_failure: Callable[[Exception], None] = lambda exc: None,
                 after_write: Callable[[], Awaitable[None]] | None = None):
        self._write = write
        self._after_write = after_write      # e.g. wait until every DNS worker has the changes
        self.delay = delay
        self._on_failure = on_failure
        self._pending: list[tuple[Ops, Callable[[], None] | None]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.commits = 0
        self.failures = 0
        self.committed_requests = 0

    def full(self) -> bool:
        return len(self._pending) >= MAX_PENDING

    def submit(self, ops: Ops, done: Callable[[], None] | None = None) -> None:
        self._pending.append((ops, done))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            await self.flush()

    async def flush(self) -> None:
        self._wake.clear()
        batch, self._pending = self._pending, []
        if not batch:
            self._idle.set()
            return
        merged = Ops()
        for ops, _ in batch:
            merged.extend(ops)
        try:
            if merged:
                await asyncio.to_thread(self._write, merged)
            if self._after_write is not None:
                await self._after_write()
        except StoreError as exc:
            self.failures += 1
            log.error("session history: commit of %d request(s) failed, not answered: %s", len(batch), exc)
            self._on_failure(exc)
        else:
            self.commits += 1
            self.committed_requests += len(batch)
            for _, done in batch:
                if done is not None:
                    done()
        if not self._pending:
            self._idle.set()

    async def drain(self) -> None:
        """Commit what is pending (at stop; the caller bounds the time)."""
        if self._pending:
            await self.flush()
