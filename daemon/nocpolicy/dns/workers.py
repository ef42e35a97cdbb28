"""Extra DNS worker processes for ``--workers N`` (placeholder until implemented)."""

from __future__ import annotations


class WorkerSet:
    def __init__(self, options, guard):
        self.n = max(0, options.workers - 1)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def notify(self, msg: dict) -> None:
        pass

    def stats(self) -> list:
        return []
