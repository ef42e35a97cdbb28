"""Named tasks with kept references, cancelled and awaited together (no orphan tasks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine

log = logging.getLogger(__name__)


class TaskSet:
    """Owns the background tasks of one component.

    A task that fails is logged and reported through ``on_failure`` (the component
    then shows as failed in status and metrics); ``close()`` cancels and awaits all.
    """

    def __init__(self, owner: str, on_failure: Callable[[str, BaseException], None] | None = None):
        self.owner = owner
        self._tasks: set[asyncio.Task] = set()
        self._on_failure = on_failure

    def spawn(self, name: str, coro: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed: %s", task.get_name(), exc, exc_info=exc)
            if self._on_failure:
                self._on_failure(task.get_name(), exc)

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
