"""A followed query-log file as a detection source."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .follow import Follower
from .logformats import PARSERS
from .observation import Observation

POLL_EVERY = 0.25


class LogSource:
    def __init__(self, path: str, fmt: str, sink: Callable[[list[Observation]], None], *,
                 from_end: bool = True, interval: float = POLL_EVERY):
        self.path, self.format, self.sink, self.interval = path, fmt, sink, interval
        self.follower = Follower(path, from_end=from_end)
        self.parse = PARSERS[fmt]
        self.unparsed = 0
        self.saw_query = False        # unbound with log-queries and log-replies: judge the query lines only

    async def run(self) -> None:
        try:
            while True:
                lines = await asyncio.to_thread(self.follower.poll)
                if lines:
                    self.feed(lines)
                await asyncio.sleep(self.interval)
        finally:
            self.follower.close()

    def feed(self, lines: list[str]) -> None:
        batch = []
        for line in lines:
            q = self.parse(line)
            if q is None:
                self.unparsed += 1
                continue
            if q.reply:
                if self.saw_query:
                    continue
            else:
                self.saw_query = True
            batch.append(Observation("logfile", q.client, q.name, q.qtype))
        if batch:
            self.sink(batch)

    def stats(self) -> dict:
        f = self.follower
        return {"path": self.path, "format": self.format, "lines": f.lines, "unparsed": self.unparsed,
                "rotations": f.rotations, "truncations": f.truncations}
