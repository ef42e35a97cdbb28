"""Named tasks with kept references, cancelled and awaited together (no orphan tasks).

Two kinds of task:

* ``spawn(name, coro)``: a one-shot task (apply this plan, swap that pool). A failure
  is logged with its traceback and reported through ``on_failure``; it clears at the
  next :meth:`TaskSet.kick` (a committed policy), since a one-shot has nothing to retry.
* ``supervise(name, factory)``: a background loop that must keep running. When it
  raises, the failure is logged with its traceback and reported, and the loop is
  started again from ``factory()`` after a backoff (1 s, doubling, at most 60 s).
  A restarted loop that runs :attr:`stable_after` seconds without failing is healthy
  again and reported through ``on_recovery``; :meth:`kick` (called after every
  committed policy) restarts failing loops at once, so a good reload fixes a bad one
  without waiting for the backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 10.0


class TaskSet:
    """Owns the background tasks of one component; ``close()`` cancels and awaits all."""

    backoff_first = BACKOFF_FIRST
    backoff_max = BACKOFF_MAX
    stable_after = STABLE_AFTER

    def __init__(self, owner: str, on_failure: Callable[[str, BaseException], None] | None = None,
                 on_recovery: Callable[[], None] | None = None):
        self.owner = owner
        self._tasks: set[asyncio.Task] = set()
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self.failing: dict[str, str] = {}        # task name -> "ExcType: message", while failing
        self.restarts: dict[str, int] = {}       # task name -> restarts so far (a metric)
        self._kicked: asyncio.Event | None = None

    def spawn(self, name: str, coro: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def supervise(self, name: str, factory: Callable[[], Coroutine]) -> asyncio.Task:
        """Run ``factory()`` for as long as the component lives, restarting it when it fails."""
        return self.spawn(name, self._supervisor(name, factory))

    async def _supervisor(self, name: str, factory: Callable[[], Coroutine]) -> None:
        delay = self.backoff_first
        while True:
            inner = asyncio.get_running_loop().create_task(factory(), name=f"{self.owner}:{name}:run")
            watch = asyncio.get_running_loop().create_task(self._healthy_after(name), name=f"{self.owner}:{name}:ok")
            try:
                await asyncio.wait({inner})
            finally:
                watch.cancel()
                if not inner.done():
                    inner.cancel()
                    await asyncio.gather(inner, return_exceptions=True)
            if inner.cancelled():
                return
            exc = inner.exception()
            if exc is None:
                return                     # a loop that ends by itself is done
            if name not in self.failing:
                delay = self.backoff_first
            self._failed(f"{self.owner}:{name}", exc, restart_in=delay, key=name)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            await self._backoff(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _healthy_after(self, name: str) -> None:
        await asyncio.sleep(self.stable_after)
        if self.failing.pop(name, None) is not None:
            log.info("task %s:%s runs again without failing", self.owner, name)
            self._recovered()

    async def _backoff(self, delay: float) -> None:
        if self._kicked is None:
            self._kicked = asyncio.Event()
        try:
            await asyncio.wait_for(self._kicked.wait(), delay)
        except TimeoutError:
            pass

    def kick(self) -> None:
        """A new policy is in force: restart failing loops now; forget one-shot failures."""
        for name in [n for n in self.failing if n.startswith("once:")]:
            del self.failing[name]
        if self._kicked is not None:
            self._kicked.set()
            self._kicked = asyncio.Event()
        self._recovered()

    def _recovered(self) -> None:
        if not self.failing and self._on_recovery:
            self._on_recovery()

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(task.get_name(), exc, key="once:" + task.get_name())

    def _failed(self, name: str, exc: BaseException, *, key: str, restart_in: float | None = None) -> None:
        again = f"; restarting in {restart_in:g}s" if restart_in is not None else ""
        log.error("task %s failed: %s: %s%s", name, type(exc).__name__, exc, again, exc_info=exc)
        self.failing[key] = f"{type(exc).__name__}: {exc}"
        if self._on_failure:
            self._on_failure(name, exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace: float = 5.0) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                log.warning("task %s did not stop within %.1fs", t.get_name(), grace)
