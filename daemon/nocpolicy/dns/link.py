"""A DNS worker process's end of the pipe to the main process (see workers.py).

The worker is the daemon itself (``python -m nocpolicy.worker``: the same start-up,
reload and stop code, with only the subscribers area and the DNS guard). This link
reads the main process's changes on stdin, one JSON object per line, and applies
them with the same code the main process uses::

  {"op": "reload", "seq": N}                                 the daemon's own reload
  {"op": "decision", "kind": K, "customer": ID, "value": V, "seq": N}   Subscribers.apply
  {"op": "list.update", "list": ID, "add": [...], "remove": [...], "seq": N}
  {"op": "cache.flush", "name": NAME or null, "seq": N}      forget cached answers (own cache)

and answers each with ``{"ack": N}`` once applied. Every second it reports its
counters on stdout. End of input (the main process is gone) stops the worker as a
SIGTERM would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from ..subscribers.model import Decision
from .stats import stats_to_json

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0
MAX_LINE = 1 << 24          # a list.update can carry many names; anything longer is refused


class MainLink:
    def __init__(self, guard, subscribers):
        self.guard = guard
        self.subscribers = subscribers

    def start(self, tasks) -> None:
        tasks.spawn("link-control", self._control())
        tasks.spawn("link-report", self._report())

    async def _control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            try:
                line = await reader.readline()
            except ValueError:                  # longer than MAX_LINE: skip it, keep reading
                log.error("control message longer than %d bytes ignored", MAX_LINE)
                continue
            if not line:
                log.info("the main process is gone: stopping")
                signal.raise_signal(signal.SIGTERM)
                return
            seq = await self.handle(line)
            _write({"ack": seq})

    async def handle(self, line: bytes) -> int:
        """Apply one control message; returns its sequence number (0 if unreadable)."""
        msg: dict = {}
        try:
            msg = json.loads(line)
            op = msg["op"]
            if op == "reload":
                await self.guard.ctx.commands.dispatch("reload", {}, actor="main process", source="dns worker")
            elif op == "decision":
                self.subscribers.apply(Decision.from_json(msg))
            elif op == "list.update":
                self.guard.apply_entries(msg["list"], msg.get("add", []), msg.get("remove", []))
            elif op == "cache.flush":
                await self.guard.flush_cache(msg.get("name"))
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # a bad message must not kill the worker
            log.error("control message failed: %s", exc)
        seq = msg.get("seq", 0) if isinstance(msg, dict) else 0
        return seq if isinstance(seq, int) else 0

    async def _report(self) -> None:
        g = self.guard
        while True:
            g.engine.drain()
            counts, g.worker_counts = g.worker_counts, {}
            _write({**stats_to_json(g.stats), "counts": [[*k, n] for k, n in counts.items()]})
            await asyncio.sleep(REPORT_EVERY)


def _write(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
