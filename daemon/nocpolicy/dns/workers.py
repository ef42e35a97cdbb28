"""``--workers N``: N-1 extra DNS worker processes sharing the DNS ports (SO_REUSEPORT).

This module is the main process's side (the supervisor). Each worker is
``python -m nocpolicy.worker``: the daemon's own start-up code running only the
subscribers area and the DNS guard on its own event loop. It loads the policy and
lists itself (the lists' last-good copies are shared under the state directory),
reads runtime decisions from the state store at start and writes its own detections
there (SQLite WAL, several processes). The main process stays in charge of everything
else (commands, metrics, reloads) and tells workers what changed over the worker's
stdin, one JSON object per line (dns/link.py is the worker's end):

  {"op": "reload"}                                          policy or lists changed
  {"op": "decision", "kind": K, "customer": ID, "value": V} a runtime decision (opt-out)
  {"op": "list.update", "list": ID, "add": [...], "remove": [...]}

Workers report their counters every second on stdout (one JSON line); the
main process adds them up at scrape time. A worker that exits is restarted
after a second. Each worker holds its own copy of the lists (memory x N).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys

from ..subscribers.model import Decision
from .stats import DnsStats, stats_from_json

log = logging.getLogger(__name__)

RESTART_AFTER = 1.0
# systemd's notify socket and watchdog belong to the main process alone
_PRIVATE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Worker:
    def __init__(self, index: int):
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.stats: DnsStats | None = None
        self.restarts = 0
        self.acked = 0
        self.waiters: list[tuple[int, asyncio.Future]] = []


class WorkerSet:
    """The main process's view of its extra workers (none with --workers 1)."""

    def __init__(self, options, guard):
        self.options = options
        self.guard = guard
        self.n = 0 if options.extra.get("dns_worker") else max(0, options.workers - 1)
        self.workers = [Worker(i + 1) for i in range(self.n)]
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._seq = 0

    def _argv(self, w: Worker) -> list[str]:
        o = self.options
        argv = [sys.executable, "-m", "nocpolicy.worker", "--policies", o.policies,
                "--state-dir", o.state_dir, "--index", str(w.index), "--workers", str(o.workers),
                "--dns-io", o.dns_io,
                "--log-level", o.log_level]
        for host, port in self.guard.listeners.sockets():
            argv += ["--dns-listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        return argv

    async def start(self) -> None:
        for w in self.workers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._run(w), name=f"dns:worker{w.index}"))

    async def _run(self, w: Worker) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        while not self._stopping:
            w.proc = await asyncio.create_subprocess_exec(*self._argv(w), stdin=asyncio.subprocess.PIPE,
                                                          stdout=asyncio.subprocess.PIPE, env=env)
            log.info("DNS worker %d started (pid %d)", w.index, w.proc.pid)
            try:
                while True:
                    line = await w.proc.stdout.readline()
                    if not line:
                        break
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self._received(w, json.loads(line))
            finally:
                rc = await w.proc.wait()
            if self._stopping:
                return
            w.restarts += 1
            log.error("DNS worker %d exited with %s; restarting", w.index, rc)
            await asyncio.sleep(RESTART_AFTER)

    def _received(self, w: Worker, msg: dict) -> None:
        """One line from a worker: an acknowledgement or its counters."""
        if "ack" in msg:
            w.acked = max(w.acked, int(msg["ack"]))
            for seq, fut in list(w.waiters):
                if seq <= w.acked and not fut.done():
                    fut.set_result(True)
            w.waiters = [(q, f) for q, f in w.waiters if not f.done()]
            return
        w.stats = stats_from_json(msg)
        counts = {(a, b, c): n for a, b, c, n in msg.get("counts", [])}
        if counts:
            self.guard.publish_counts(counts)

    def notify(self, msg: dict) -> list[asyncio.Future]:
        """Send a change to every worker; returns futures resolved when each has applied it."""
        if not self.workers:
            return []
        self._seq += 1
        data = (json.dumps({**msg, "seq": self._seq}) + "\n").encode()
        futs = []
        loop = asyncio.get_running_loop()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None and w.proc.stdin is not None:
                with contextlib.suppress(Exception):
                    w.proc.stdin.write(data)
                    fut = loop.create_future()
                    w.waiters.append((self._seq, fut))
                    futs.append(fut)
        return futs

    async def sync(self, msg: dict, within: float = 2.0) -> bool:
        """notify() and wait until every worker has applied the change (False on timeout)."""
        futs = self.notify(msg)
        if not futs:
            return True
        done, pending = await asyncio.wait(futs, timeout=within)
        for f in pending:
            f.cancel()
        if pending:
            log.warning("%d DNS worker(s) did not confirm %s within %.1fs", len(pending), msg.get("op"), within)
        return not pending

    async def replicate(self, d: Decision) -> bool:
        """A runtime decision, applied by every worker before this returns (subscribers/api.Replica)."""
        return await self.sync({"op": "decision", **d.as_json()})

    def stats(self) -> list[DnsStats]:
        return [w.stats for w in self.workers if w.stats is not None]

    def status(self) -> list[dict]:
        return [{"worker": w.index, "pid": w.proc.pid if w.proc else None,
                 "running": bool(w.proc and w.proc.returncode is None), "restarts": w.restarts,
                 "udp_queries": w.stats.udp if w.stats else 0}
                for w in self.workers]

    async def stop(self) -> None:
        self._stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.terminate()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5)
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
