"""``--workers N``: N-1 extra DNS worker processes sharing the DNS ports (SO_REUSEPORT).

Each worker is ``python -m nocpolicy.dns.workers`` running its own DnsGuard on
its own event loop: it loads the policy and lists itself (the lists' last-good
copies are shared under the state directory), reads opt-outs from the state
store and writes its own detections there (SQLite WAL, several processes).
The main process stays in charge of everything else (commands, metrics,
reloads) and tells workers what changed over the worker's stdin, one JSON
object per line:

  {"op": "reload"}                                  policy or lists changed
  {"op": "optout", "customer": ID, "on": BOOL}      effective at once in the worker
  {"op": "list.update", "list": ID, "add": [...], "remove": [...]}
  {"op": "cache.flush", "name": NAME or null}       forget cached answers (each worker has its own cache)

Workers report their counters every second on stdout (one JSON line); the
main process adds them up at scrape time. A worker that exits is restarted
after a second. Each worker holds its own copy of the lists (memory x N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys

from .stats import DnsStats, Histogram

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0
RESTART_AFTER = 1.0


def stats_to_json(s: DnsStats) -> dict:
    return {"udp": s.udp, "queries": s.queries, "rcodes": s.rcodes, "malformed": s.malformed,
            "send_drops": s.send_drops, "cache": s.cache, "limits": s.limits,
            "blocked": [[*k, v] for k, v in s.blocked.items()],
            "upstream": [[*k, v] for k, v in s.upstream.items()],
            "duration": {k: [h.counts, h.total] for k, h in s.duration.items()}}


def stats_from_json(d: dict) -> DnsStats:
    s = DnsStats()
    s.udp, s.queries, s.rcodes, s.malformed = d["udp"], d["queries"], d["rcodes"], d["malformed"]
    s.send_drops = d.get("send_drops", 0)
    s.cache = d.get("cache") or {}
    s.limits = dict(d.get("limits") or {})
    s.blocked = {(a, b, c): v for a, b, c, v in d["blocked"]}
    s.upstream = {(a, b): v for a, b, v in d["upstream"]}
    for k, (counts, total) in d["duration"].items():
        h = Histogram()
        h.counts, h.total = counts, total
        s.duration[k] = h
    return s


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
        argv = [sys.executable, "-m", "nocpolicy.dns.workers", "--policies", o.policies,
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
        while not self._stopping:
            w.proc = await asyncio.create_subprocess_exec(*self._argv(w), stdin=asyncio.subprocess.PIPE,
                                                          stdout=asyncio.subprocess.PIPE)
            log.info("DNS worker %d started (pid %d)", w.index, w.proc.pid)
            try:
                while True:
                    line = await w.proc.stdout.readline()
                    if not line:
                        break
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        msg = json.loads(line)
                        if "ack" in msg:
                            w.acked = max(w.acked, int(msg["ack"]))
                            for seq, fut in list(w.waiters):
                                if seq <= w.acked and not fut.done():
                                    fut.set_result(True)
                            w.waiters = [(q, f) for q, f in w.waiters if not f.done()]
                        else:
                            w.stats = stats_from_json(msg)
                            counts = {(a, b, c): n for a, b, c, n in msg.get("counts", [])}
                            if counts:
                                self.guard.publish_counts(counts)
            finally:
                rc = await w.proc.wait()
            if self._stopping:
                return
            w.restarts += 1
            log.error("DNS worker %d exited with %s; restarting", w.index, rc)
            await asyncio.sleep(RESTART_AFTER)

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


# -- the worker process ------------------------------------------------------------------

async def _worker_main(ns) -> int:
    import signal
    from pathlib import Path

    from prometheus_client import CollectorRegistry

    from ..clock import SystemClock
    from ..component import Context
    from ..events import EventBus
    from ..options import Options
    from ..policy.diff import diff_policies
    from ..policy.load import load_policy
    from ..store import Store
    from .component import DnsGuard
    from .verdict import Subscriber
    opts = Options(policies=ns.policies, state_dir=ns.state_dir, dns_listen=ns.dns_listen,
                   workers=ns.workers, dns_io=ns.dns_io, log_level=ns.log_level,
                   extra={"dns_worker": True})
    key = (Path(ns.state_dir) / "pseudonym.key").read_bytes()
    store = Store(Path(ns.state_dir) / "nocpolicy.db")
    holder: dict = {}
    ctx = Context(options=opts, store=store, clock=SystemClock(), events=EventBus(),
                  registry=CollectorRegistry(), policy=lambda: holder.get("policy"),
                  secrets={"pseudonym": key})
    guard = DnsGuard(ctx)
    policy = load_policy(ns.policies)
    (await guard.prepare(policy, diff_policies(None, policy)))()
    holder["policy"] = policy
    await guard.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def control():
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                stop.set()       # the main process is gone
                return
            msg = {}
            try:
                msg = json.loads(line)
                op = msg["op"]
                if op == "reload":
                    new = await asyncio.to_thread(load_policy, ns.policies)
                    old = holder["policy"]
                    (await guard.prepare(new, diff_policies(old, new)))()
                    holder["policy"] = new
                elif op == "optout":
                    cid, on = msg["customer"], bool(msg["on"])
                    c = guard.policy.customers_by_id.get(cid)
                    if c is not None:
                        guard.optout_state = {**guard.optout_state, cid: (on, "runtime")}
                        guard.engine.set_subscriber(cid, Subscriber(cid, security=not on,
                                                                    optional=frozenset(c.optional_lists)))
                elif op == "list.update":
                    lst = guard.lists.compiled.get(msg["list"])
                    if lst is not None:
                        for n in msg.get("add", []):
                            lst.index.subtree.add(n)
                        for n in msg.get("remove", []):
                            lst.index.subtree.discard(n)
                        guard.engine.invalidate()
                elif op == "cache.flush" and guard.engine.acache is not None:
                    from .cache import candidates
                    ac, name = guard.engine.acache, msg.get("name")
                    ac.flush(name, await candidates(ac, name) if name else None)
            except Exception as exc:  # a bad message must not kill the worker
                log.error("worker %d: control message failed: %s", ns.index, exc)
            with contextlib.suppress(Exception):
                sys.stdout.write(json.dumps({"ack": msg.get("seq", 0)}) + "\n")
                sys.stdout.flush()

    async def report():
        while True:
            guard.engine.drain()
            counts, guard.worker_counts = guard.worker_counts, {}
            doc = {**stats_to_json(guard.stats), "counts": [[*k, n] for k, n in counts.items()]}
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(REPORT_EVERY)

    tasks = [loop.create_task(control()), loop.create_task(report())]
    await stop.wait()
    for t in tasks:
        t.cancel()
    await guard.stop()
    store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from ..app import loop_factory
    from ..logs import setup_logging
    from ..options import _hostport
    p = argparse.ArgumentParser(prog="nocpolicy-dns-worker")
    p.add_argument("--policies", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--dns-listen", type=_hostport, action="append", required=True)
    p.add_argument("--index", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dns-io", choices=("auto", "batched", "asyncio"), default="auto")
    p.add_argument("--log-level", default="info")
    ns = p.parse_args(argv)
    setup_logging("text", ns.log_level)
    logging.getLogger().handlers[0].setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s worker{ns.index} %(name)s: %(message)s"))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_worker_main(ns))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
