"""DnsGuard: the DNS guard component (wiring only; decisions live in verdict.py).

API for other components (stable; passive detection is handed it as detect/guard.py's
``Guard`` in app.py)::

    v = guard.judge("192.0.2.10", "evil.example")        # Verdict, see verdict.py
    if v.blocked:
        guard.record_detection(v, "192.0.2.10", "evil.example", source="passive")
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from pathlib import Path

from .. import lagtrace
from ..clock import monotonic, utcnow, wall
from ..component import Component
from ..control.commands import Command
from ..errors import EnforcementError, NotFound
from ..errors import Invalid as InvalidRequest
from ..policy.fields import Invalid, as_bool, as_duration, as_id, as_ip, as_str, int_range, list_of
from .acl import AccessList
from .cache import AnswerCache, cache_entries, candidates
from .detections import DetectionLog
from .engine import Engine
from .guardstats import GuardCollector
from .kernelmeter import KernelMeter, Meter
from .link import MainLink
from .listbuild import empty_on_loop, free_on_loop
from .lists import ListSet
from .mmsg import BatchGroup, batched_io, native_io
from .pseudonym import PseudonymKeys
from .server import Listeners
from .sources import ListManager, check_names
from .stats import DnsCollector, DnsStats
from .upstream import UpstreamPool
from .verdict import Verdict, explain
from .walled import WalledGarden
from .workers import WorkerSet

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0
FLUSH_MAX = 10.0          # the longest wait between two drains (metrics and detections lag that much)
DRAIN_SHARE = 0.02        # the drain's share of the event loop's time at most (then it waits longer)
PRUNE_EVERY = 3600.0
REFRESH_CHECK = 5.0


def as_since(node, _p=None) -> dt.datetime:
    """An ISO time or a duration back from now (``24h``, ``7d``)."""
    v = node.value
    if isinstance(v, str) and v.strip()[:1].isdigit() and not v.strip()[4:5] == "-":
        return utcnow() - dt.timedelta(seconds=as_duration(node))
    from ..policy.fields import as_datetime
    return as_datetime(node)


def _name(node, _p=None) -> str:
    s = as_str(node).strip()
    if not s:
        raise Invalid("must not be empty")
    return s


def exempt_customers(customers, tags) -> frozenset:
    """Customers the per-source limits do not apply to: public safety, or one of ``tags``."""
    tags = set(tags)
    return frozenset(c.id for c in customers if c.public_safety or tags.intersection(c.tags))


class DnsGuard(Component):
    name = "dns"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.stats = DnsStats()
        self._entry_watchers: list = []     # told after each change of runtime list entries
        state_dir = getattr(ctx.options, "state_dir", None)
        self.keys = PseudonymKeys(Path(state_dir) / "pseudonym.key" if state_dir else None,
                                  rotate=not ctx.options.extra.get("dns_worker"))
        self.detections = DetectionLog(ctx.store, self.keys, counters=self.stats.limits)
        self.lists = ListManager(ctx.store, ctx.options.state_dir)
        self.engine = Engine(self.stats, self.detections)
        self.pool: UpstreamPool | None = None
        self.listeners: Listeners | None = None
        self.workers = WorkerSet(ctx.options, self)
        self.batched = batched_io(ctx.options.dns_io)
        self.native = self.batched and native_io(ctx.options.dns_io)
        self.io_group: BatchGroup | None = None     # the batched sockets, once started
        self.policy = None
        self.worker_counts: dict[tuple, int] = {}     # worker process: block counts not yet reported
        self._started = False
        # who each client is: pushed by the subscribers area (and sent on to the workers)
        self.subscribers = ctx.subscribers
        self.subscribers.watch(self.engine.set_view)
        if self.workers.n:
            self.subscribers.replicate_to(self.workers.replicate)
        self.link = MainLink(self, self.subscribers) if ctx.options.extra.get("dns_worker") else None
        self.kernel = KernelMeter(self.stats.limits)   # dns.ratelimit.kernel_qps (main process only)
        self._meter_wanted: Meter | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def prepare(self, policy, change):
        compiled = {}
        for bl in policy.dns.lists:
            compiled[bl.id] = await self.lists.build(bl, policy.directory, background=self._started)
        list_set = ListSet.of(compiled[bl.id] for bl in policy.dns.lists)
        old_ups = self.policy.dns.upstreams if self.policy else None
        new_pool = None
        if old_ups != policy.dns.upstreams:
            new_pool = UpstreamPool(self._upstreams(policy), self.stats, self.engine.reply)
        old_cache = self.policy.dns.cache if self.policy else None
        old_udp = self.policy.dns.limits.max_udp_size if self.policy else None
        new_cache = (new_pool is not None or old_cache != policy.dns.cache
                     or old_udp != policy.dns.limits.max_udp_size)    # stored answers fit the old size

        limits = policy.dns.limits
        exempt = exempt_customers(policy.customers, limits.ratelimit.exempt_tags)

        walled = WalledGarden.of(policy.suspension)
        meter = self._meter(limits.ratelimit, [p for c in policy.customers if c.id in exempt for p in c.prefixes])

        def commit():
            lagtrace.mark("dns commit")
            self._apply_limits(limits, exempt)
            self._meter_wanted = meter
            if self._started and self.link is None:
                self.tasks.spawn("kernel-meter", self._enforce_meter())
            self.engine.walled = walled
            self._retire(self.lists.compiled, compiled)
            self.lists.adopt(policy.dns.lists, compiled)
            judged = self._judged()
            self.engine.swap(list_set)
            if self._started:        # the answers judged under the old lists: freed a slice at a time
                self.tasks.spawn("retire-answers", empty_on_loop(judged))
            self.policy = policy
            if new_cache:      # new settings or other upstreams: start afresh
                self.engine.acache = AnswerCache(policy.dns.cache) if policy.dns.cache.enabled else None
            if new_pool is not None:
                old, self.pool = self.pool, new_pool
                if self._started:
                    self.tasks.spawn("upstream-swap", self._swap_pool(new_pool, old))
            if self._started:
                self.workers.notify({"op": "reload"})
            lagtrace.mark("dns commit done")
        return commit

    def _upstreams(self, policy) -> tuple:
        """The policy's upstreams; from /etc/resolv.conf (`system`) never nocpolicyd itself."""
        ups = policy.dns.upstreams
        if not any(u.system for u in ups):
            return ups
        mine = {(h, p) for h, p in self.ctx.options.dns_listen}
        wild = {p for h, p in self.ctx.options.dns_listen if h in ("0.0.0.0", "::")}
        keep = tuple(u for u in ups if not u.system or (u.address not in mine and u.address[1] not in wild))
        for u in ups:
            if u not in keep:
                log.warning("upstreams: system: skipping %s:%d from /etc/resolv.conf: nocpolicyd "
                            "itself listens there", *u.address)
        return keep
    def _apply_limits(self, limits, exempt: frozenset) -> None:
        """dns.ratelimit, dns.access_control, dns.tcp and dns.detection_log (the defences against hostile traffic)."""
        engine = self.engine
        engine.limiter.configure(limits.ratelimit, exempt)
        if engine.acl.allow != limits.access.allow:
            engine.set_access(AccessList(limits.access.allow, live=engine.acl.live))
        engine.tcp_conf = limits.tcp
        engine.max_udp = limits.max_udp_size
        if self.detections.conf != limits.detection_log:
            self.detections.configure(limits.detection_log)
        self.keys.period = limits.detection_log.key_rotation

    def _meter(self, rl, exempt_prefixes) -> Meter:
        """The kernel backstop the policy asks for (kernelmeter.py) on the UDP listen ports."""
        ports = tuple(sorted({p for _h, p in self.ctx.options.dns_listen}))
        return Meter(rl.kernel_qps, rl.kernel_burst or rl.kernel_qps, ports, rl.ipv4_prefix, rl.ipv6_prefix,
                     tuple(str(p) for p in exempt_prefixes))

    async def _enforce_meter(self) -> None:
        try:
            await self.kernel.set(self._meter_wanted)
        except EnforcementError as exc:        # DNS keeps working; the operator sees the error
            log.error("dns.ratelimit.kernel_qps: %s", exc)

    async def _meter_loop(self) -> None:
        """The kernel meter: applied at start, its drop counter read back every 10 s."""
        await self._enforce_meter()
        while True:
            await asyncio.sleep(10.0)
            try:
                await self.kernel.poll()
            except EnforcementError as exc:
                log.error("dns.ratelimit.kernel_qps: %s", exc)

    def _retire(self, old: dict, new: dict) -> None:
        """Free replaced list indexes a slice at a time on the loop (listbuild.free_on_loop):
        dropping a million-name set at once holds the interpreter ~0.2 s, stalling answers."""
        keep = {id(c.index) for c in new.values()}
        gone = [c.index for c in old.values() if id(c.index) not in keep]
        if gone and self._started:
            self.tasks.spawn("retire-lists", self._free(gone))

    def _judged(self) -> list[dict]:
        """The engine's tables of answers judged under the lists in force (swap replaces them)."""
        e = self.engine
        return [e.allowed, *e.answers.values(), *e.zones.values()]

    @staticmethod
    async def _free(gone) -> None:
        lagtrace.mark("free old lists")
        await free_on_loop(gone)
        lagtrace.mark("free old lists done")
        lagtrace.census("after the old lists were freed")

    async def _swap_pool(self, new: UpstreamPool, old: UpstreamPool | None) -> None:
        await new.open(self.io_group)
        self.engine.pool = new
        if old is not None:
            await asyncio.sleep(5)   # let answers in flight arrive
            await old.close()

    async def start(self) -> None:
        if self.batched:
            self.io_group = BatchGroup(asyncio.get_running_loop(), self.stats)
        if self.pool is not None:
            await self.pool.open(self.io_group)
            self.engine.pool = self.pool
        self.listeners = Listeners(self.engine, self.ctx.options.dns_listen,
                                   reuse_port=self.ctx.options.workers > 1, batched=self.io_group,
                                   native=self.native)
        await self.listeners.start()
        log.info("DNS guard UDP I/O: %s", "native (C read loop and fast paths)" if self.native
                 else "batched (recvmmsg/sendmmsg from Python)" if self.batched else "asyncio")
        self._started = True
        self._lag_trace = lagtrace.start()
        self.tasks.supervise("detections", self._flush_loop)
        self.tasks.supervise("ratelimit-window", self._window_loop)
        self.tasks.supervise("refresh", self._refresh_loop)
        if self.link is None:
            self.tasks.supervise("kernel-meter", self._meter_loop)
        if self.link is not None:
            self.link.start(self.tasks)
        await self.workers.start()
        where = ", ".join(f"{h}:{p}" for h, p in self.listeners.sockets())
        self.set_state("running", f"listening on {where}" + (f", {self.ctx.options.workers} workers"
                                                               if self.ctx.options.workers > 1 else ""))

    async def stop(self) -> None:
        await self.workers.stop()
        if self.listeners is not None:
            await self.listeners.stop()
        await self.tasks.close()
        if self.link is None and self.kernel.meter is not None:
            try:
                await self.kernel.set(None)
            except EnforcementError as exc:
                log.error("dns.ratelimit.kernel_qps: removing the table: %s", exc)
        if self.pool is not None:
            await self.pool.close()
        self.lists.close()
        with contextlib.suppress(Exception):
            self.engine.drain()
            await asyncio.to_thread(self.detections.write, self.detections.take())
        self.set_state("stopped")

    async def dry_run(self, policy, change) -> str | None:
        if not change.touches("dns.lists", "dns.upstreams", "dns", "customers"):
            return None
        return change.describe()

    # -- background loops ------------------------------------------------------------

    async def _window_loop(self) -> None:
        """A new one-second rate-limit window, every second."""
        while True:
            await asyncio.sleep(1.0)
            self.engine.limiter.tick()

    async def _flush_loop(self) -> None:
        last_prune = 0.0
        wait = FLUSH_EVERY
        while True:
            await asyncio.sleep(wait)
            t = monotonic()
            self.engine.drain()
            batch = self.detections.take()
            if batch:
                self._publish_counts(batch)
            wait = flush_wait(monotonic() - t)
            if batch:
                try:
                    await asyncio.to_thread(self.detections.write, batch)
                except Exception as exc:  # the store is busy or broken: count, keep serving
                    self.detections.drop("write_error", sum(v[2] for v in batch.values()))
                    log.error("detection log write failed: %s", exc)
            now = monotonic()
            if now - last_prune > PRUNE_EVERY and self.policy is not None:
                last_prune = now
                n = await asyncio.to_thread(self.detections.prune, self.policy.dns.detection_retention)
                if n:
                    log.info("pruned %d detection records older than the retention period", n)

    def _publish_counts(self, batch: dict) -> None:
        """Blocks of the last second as counts per list and class (no customer, client or name):
        the MQTT bridge folds them into its ``detections`` events (Art. 45(5))."""
        counts: dict[tuple, int] = {}
        view = self.subscribers.view
        for (lst, cls, _action, cust, _client, _name, source, _entry), (_f, _l, n, _s) in batch.items():
            sub = view.get(cust) if cust is not None else None
            if sub is not None and not sub.consents("analysis"):
                continue            # withdrew consent to analysis (Art. 45(5)): not in the platform's counts
            counts[(lst, cls, source)] = counts.get((lst, cls, source), 0) + n
        if self.ctx.options.extra.get("dns_worker"):       # reported to the main process instead
            for k, n in counts.items():
                self.worker_counts[k] = self.worker_counts.get(k, 0) + n
            return
        self.publish_counts(counts)

    def publish_counts(self, counts: dict) -> None:
        for (lst, cls, source), n in counts.items():
            self.ctx.events.publish("block", {"list": lst, "class": cls, "count": n, "source": source})

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_CHECK)
            policy = self.policy
            if policy is None:
                continue
            now = wall()
            for bl in policy.dns.lists:
                st = self.lists.states.get(bl.id)
                last = (st.last_attempt or 0) if st else 0
                if now - last < bl.refresh:
                    continue
                await self.refresh_list(bl.id)

    async def refresh_list(self, list_id: str) -> dict:
        policy = self.policy
        bl = policy.lists_by_id.get(list_id) if policy else None
        if bl is None:
            raise NotFound(f"unknown list {list_id!r}")
        new = await self.lists.build(bl, policy.directory, background=True)
        if policy is not self.policy:      # a reload won the race; it has its own copy
            return self.lists.states[list_id].as_dict()
        compiled = dict(self.lists.compiled)
        changed = new is not compiled.get(list_id)
        compiled[list_id] = new
        if changed:
            self._retire(self.lists.compiled, compiled)
        self.lists.adopt(policy.dns.lists, compiled)      # also records failures of this attempt
        if changed:
            self.engine.set_lists(ListSet.of(compiled[x.id] for x in policy.dns.lists))
            self.workers.notify({"op": "reload"})
        return self.lists.states[list_id].as_dict()

    # -- API for other components ------------------------------------------------------

    def judge(self, client: str, name: str) -> Verdict:
        """The verdict the guard would give ``client`` (an address string) for ``name``."""
        return self.engine.judge(client, name)

    def record_detection(self, v: Verdict, client: str, name: str | None = None,
                         source: str = "dns") -> None:
        """Log a block in the detection log (pseudonymised, batched)."""
        if name is not None and v.name != name.lower().rstrip("."):
            v = Verdict(v.action, v.customer, v.list, v.cls, v.entry, name.lower().rstrip("."), v.reason,
                        v.sinkhole_a, v.sinkhole_aaaa, v.via_cname)
        self.detections.note(v, client, source)

    def apply_entries(self, list_id: str, add: list[str], remove: list[str]) -> None:
        """Runtime entries the main process recorded (``list.update``), applied in a worker."""
        lst = self.lists.compiled.get(list_id)
        if lst is None:
            raise NotFound(f"unknown list {list_id!r}", field="list")
        self.lists.apply(lst, add, remove)
        self.engine.invalidate()

    # -- metrics and status ------------------------------------------------------------

    def collectors(self) -> list:
        return [DnsCollector(self), GuardCollector(self)]

    def all_stats(self) -> list:
        return [self.stats, *self.workers.stats()]

    def key_age(self) -> float:
        return self.keys.age()

    def list_states(self):
        return list(self.lists.states.values())

    def status(self) -> dict:
        out = super().status()
        out["lists"] = {s.id: s.entries for s in self.list_states()}
        out["upstreams"] = self.pool.status() if self.pool else []
        self.engine.collect_native()
        out["queries"] = self.stats.snapshot()
        if self.engine.acache is not None:
            out["cache"] = self.engine.acache.counters()
        if self.workers.n:
            out["workers"] = self.workers.status()
        return out

    # -- commands ----------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return [
            Command("explain", self._cmd_explain, "how the guard decides a name for a client", mutating=False),
            Command("detections", self._cmd_detections, "detection log (since, customer, limit, summary)",
                    mutating=False),
            Command("lists", self._cmd_lists, "status of every block list", mutating=False),
            Command("list.update", self._cmd_list_update, "add/remove runtime entries of a list"),
            Command("cache.show", self._cmd_cache_show, "answer cache: settings, counters, entries of a name",
                    mutating=False),
            Command("cache.flush", self._cmd_cache_flush, "forget cached answers (all, or of a name and "
                    "the names below it)"),
        ]

    async def _cmd_explain(self, args, inv) -> dict:
        client = args.req("client", as_ip)
        name = args.req("name", _name)
        args.check()
        sub = self.engine.subscriber(str(client))
        out = explain(sub, self.engine.lists, name)
        out["client"] = str(client)
        if sub.customer is None:
            out["unknown_client_treatment"] = self.policy.dns.unknown_clients
        else:
            out["optout_source"] = sub.optout_source
        return out

    async def _cmd_detections(self, args, inv) -> dict:
        since = args.get("since", as_since, None)
        cid = args.get("customer", as_id, None)
        limit = args.get("limit", int_range(1, 10_000), 100)
        summary = args.get("summary", as_bool, False)
        args.check()
        self.engine.drain()
        batch = self.detections.take()      # include what is still buffered
        await asyncio.to_thread(self.detections.write, batch)
        limit = max(1, min(limit, 10_000))
        if summary:
            # analysis summaries (Art. 45(5)) leave out customers who withdrew consent to analysis
            view = self.subscribers.view
            rows = await asyncio.to_thread(self.detections.summary, since=since, customer=cid)
            kept = [r for r in rows if r["customer"] is None or view.get(r["customer"]) is None
                    or view.get(r["customer"]).consents("analysis")]
            return {"summary": kept, "excluded_no_analysis_consent": len(rows) - len(kept)}
        rows = await asyncio.to_thread(self.detections.query, since=since, customer=cid, limit=limit)
        return {"detections": rows, "dropped": self.detections.dropped}

    async def _cmd_lists(self, args, inv) -> dict:
        args.check()
        out = []
        for bl in self.policy.dns.lists:
            st = self.lists.states.get(bl.id)
            d = st.as_dict() if st else {"list": bl.id, "entries": 0}
            d.update({"class": bl.cls, "format": bl.format, "action": bl.action, "refresh": bl.refresh})
            out.append(d)
        return {"lists": out}

    async def _cmd_list_update(self, args, inv) -> dict:
        list_id = args.req("list", as_id)
        add = args.get("add", list_of(as_str), ()) or ()
        remove = args.get("remove", list_of(as_str), ()) or ()
        reason = args.get("reason", as_str, "") or ""
        args.check()
        if list_id not in self.lists.compiled:
            raise NotFound(f"unknown list {list_id!r}", field="list")
        add_ok, add_bad = check_names(add)
        rm_ok, rm_bad = check_names(remove)
        if add_bad or rm_bad:
            raise InvalidRequest(f"not domain names: {', '.join(add_bad + rm_bad)}",
                               field="add" if add_bad else "remove")
        if not add_ok and not rm_ok:
            raise InvalidRequest("nothing to do: give add and/or remove", field="add")
        return await self.adopt_entries(list_id, add_ok, rm_ok, actor=inv.actor, reason=reason)

    # -- runtime list entries as fleet state (interfaces.RuntimeLists) --------------------

    async def adopt_entries(self, list_id: str, add: list[str], remove: list[str], *, actor: str,
                            reason: str) -> dict:
        """Add/remove runtime entries (names already checked): persisted, audited, applied here and
        in every worker before it returns; then the watchers (the fleet controller) are told."""
        lst = self.lists.compiled.get(list_id)
        if lst is None:
            raise NotFound(f"unknown list {list_id!r}", field="list")
        out = await asyncio.to_thread(self.lists.update, lst, add, remove, actor=actor, reason=reason)
        self.engine.invalidate()     # (lists.update changed the index in place)
        await self.workers.sync({"op": "list.update", "list": list_id, "add": out["added"],
                                 "remove": out["removed"]})
        for fn in self._entry_watchers:
            fn(list_id, out["added"], out["removed"])
        return out

    def runtime_entries(self) -> dict[str, list[str]]:
        """Every list's runtime entries (``list.update``), from the store."""
        return {lid: self.lists.additions(lid) for lid in self.lists.compiled}

    def watch_runtime_entries(self, fn) -> None:
        """Call ``fn(list_id, added, removed)`` after each change of runtime entries."""
        self._entry_watchers.append(fn)

    def has_list(self, list_id: str) -> bool:
        return list_id in self.lists.compiled

    def detection_summary(self, since) -> list[dict]:
        """Counts of the detection log since ``since`` per list, class, customer and source (reads
        the store: call it off the loop). For the fleet's upward summaries (fleet/upward.py)."""
        return self.detections.summary(since=since, customer=None)

    async def flush_cache(self, name: str | None) -> int:
        """Forget this process's cached answers (of ``name`` and below, or all); the count."""
        ac = self.engine.acache
        if ac is None:
            return 0
        return ac.flush(name, await candidates(ac, name) if name else None)

    async def _cmd_cache_show(self, args, inv) -> dict:
        name = args.get("name", _name, None)
        args.check()
        self.engine.drain()
        conf = self.policy.dns.cache
        ac = self.engine.acache
        out = {"enabled": ac is not None, "settings": {k: getattr(conf, k) for k in conf.__dataclass_fields__},
               "processes": [{"worker": 0, **(ac.counters() if ac else {})}]}
        for w in self.workers.workers:
            if w.stats is not None:
                out["processes"].append({"worker": w.index, **w.stats.cache})
        total: dict = {}
        for p in out["processes"]:
            for k, v in p.items():
                if k != "worker":
                    total[k] = total.get(k, 0) + v
        out["total"] = total
        if name is not None:
            out["name"] = name.lower().rstrip(".")
            out["entries"] = cache_entries(ac, out["name"], await candidates(ac, out["name"])) if ac else []
        return out

    async def _cmd_cache_flush(self, args, inv) -> dict:
        name = args.get("name", _name, None)
        args.check()
        if name is not None:
            ok, bad = check_names([name])
            if bad:
                raise InvalidRequest(f"not a domain name: {name!r}", field="name")
            name = ok[0]
        n = await self.flush_cache(name)
        confirmed = await self.workers.sync({"op": "cache.flush", "name": name})
        log.info("answer cache flushed by %s: %s (%d entries here)", inv.actor, name or "everything", n)
        return {"flushed": n, "name": name, "workers_confirmed": confirmed}


def flush_wait(spent: float) -> float:
    """Seconds until the next drain, given that this one took ``spent`` on the event loop: every
    second, unless draining would take more than DRAIN_SHARE of the loop. A DGA flood across
    thousands of parents dirties one entry per parent each second, and the drain's cost grows
    with those entries, not with the queries: draining less often costs the same per drain and
    less per second. Blocks then reach the metrics and the detection log up to FLUSH_MAX late."""
    return min(FLUSH_MAX, max(FLUSH_EVERY, spent / DRAIN_SHARE))
