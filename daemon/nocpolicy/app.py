"""nocpolicyd: wire the components, run them under one TaskGroup, reload and stop cleanly.

Start: load and validate the policy (refuse to start on errors), open the state
store, prepare and commit every component, start them in list order, then serve
metrics and the admin API. Reload (SIGHUP, `nocpolicyctl reload`, a saved file):
validate the whole new policy, let every component prepare, then commit all --
or keep the old policy and report why. Stop (SIGTERM/SIGINT): components stop in
reverse order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import faulthandler
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry

from . import __version__, lagtrace, sdnotify
from .clock import SystemClock, utcnow, wall
from .component import Component, Context
from .control.admin import AdminApi
from .control.commands import Args, Command, CommandRegistry, Invocation
from .control.customer import customer_listener
from .control.metrics_http import metrics_handler
from .control.token import ensure_token
from .errors import NocpolicyError, PolicyInvalid
from .events import EventBus
from .gcpause import freeze_start_up
from .logs import setup_logging
from .loop import loop_factory
from .metrics import ComponentCollector, CoreMetrics, EventBusCollector
from .options import Options, parse_options
from .policy.diff import PolicyChange, diff_policies
from .policy.fields import as_bool, int_range
from .policy.load import load_policy
from .policy.model import Policy
from .store import Store
from .web.plain import HttpServer

log = logging.getLogger("nocpolicy")

T = TypeVar("T")

WATCH_INTERVAL = 1.0     # seconds between looks at the policy files
WATCH_DEBOUNCE = 0.5     # files must be unchanged this long before a reload
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the GIL while another waits (see main)


def component_types(options: Options) -> list[type[Component]]:
    """Every component, in start order (stop is the reverse). One visible list."""
    from .advisories.component import Advisories
    from .detect.component import Detector
    from .dns.component import DnsGuard
    from .exports.component import Exports
    from .fleet.component import MqttBridge
    from .maintenance.component import Maintenance
    from .qos.component import Enforcer
    from .sessions.component import Sessions
    from .suspension.component import Suspensions
    return [DnsGuard, Sessions, Detector, Enforcer, Maintenance, Suspensions, Advisories, Exports, MqttBridge]


def new_subscribers(ctx: Context) -> Component:
    """The one owner of subscriber state, built before the components that read it."""
    from .subscribers.component import Subscribers
    return Subscribers(ctx)


def with_subscribers(components: list[Component], subscribers: Component) -> list[Component]:
    """The component list with the subscribers area right after the DNS guard (first when
    there is none). Its prepare and commit run with the others' (a commit is synchronous, so
    the guard's new lists and the new subscriber view reach the next query together); it has
    nothing to start or stop, and the guard stays first in start order and in status."""
    at = next((i + 1 for i, c in enumerate(components) if c.name == "dns"), 0)
    return [*components[:at], subscribers, *components[at:]]


def wire(components: list[Component]) -> None:
    """The one place components meet: each is handed the typed interface it needs of another.

    Protocols: ``interfaces.FleetQos``, ``notices.publisher.NoticePublisher`` and
    ``NoticeLinkListener``, ``detect.guard.Guard``. A component the daemon runs without (tests build partial
    lists) is handed None, or nothing.
    """
    from .advisories.attribution import Attribution
    from .advisories.component import Advisories
    from .detect.component import Detector
    from .dns.component import DnsGuard
    from .exports.component import Exports
    from .fleet.component import MqttBridge
    from .maintenance.component import Maintenance
    from .qos.component import Enforcer
    from .sessions.component import Sessions
    from .subscribers.component import Subscribers
    from .suspension.component import Suspensions
    qos = _first(components, Enforcer)
    bridge = _first(components, MqttBridge)
    maintenance = _first(components, Maintenance)
    if bridge is not None:
        bridge.qos = qos                                          # FleetQos
        bridge.decisions = _first(components, Subscribers)        # FleetDecisions
        bridge.lists = _first(components, DnsGuard)               # RuntimeLists
        bridge.detection_source = bridge.lists                    # DetectionSummary
        bridge.sessions = _first(components, Sessions)            # FleetSessions
    if bridge is not None and maintenance is not None:
        maintenance.set_notice_publisher(bridge)                  # NoticePublisher
        bridge.add_link_listener(maintenance)                     # NoticeLinkListener
    suspensions = _first(components, Suspensions)
    if suspensions is not None and maintenance is not None:
        suspensions.use_post(maintenance)                         # LetterPost (notices/publisher.py)
    if suspensions is not None and bridge is not None:
        suspensions.set_notice_publisher(bridge)                  # NoticePublisher: letters to mqtt_topic
        bridge.add_link_listener(suspensions)                     # NoticeLinkListener
    if suspensions is not None:
        suspensions.enforcer = qos                                # SuspensionEnforcer (or None)
    detect, dns = _first(components, Detector), _first(components, DnsGuard)
    if detect is not None and dns is not None:
        detect.guard.connect(dns)                                 # Guard (nocpolicy.detect.guard)
    sessions, subscribers = _first(components, Sessions), _first(components, Subscribers)
    if sessions is not None and subscribers is not None:
        sessions.connect(subscribers)                             # SessionFeed (nocpolicy.sessions.component)
    if qos is not None and subscribers is not None:
        qos.use_subscribers(subscribers)                          # SubscriberSource (subscribers.api)
    if dns is not None and subscribers is not None:
        dns.engine.acl.live = subscribers.session_holds           # the access list admits live sessions
    attribution = Attribution(subscribers.static_owner if subscribers is not None else None,
                              sessions.whois_at if sessions is not None else None)
    exports, advisories = _first(components, Exports), _first(components, Advisories)
    if exports is not None:
        exports.attribution = attribution                         # who had an address (advisories.attribution)
    if advisories is not None:
        advisories.attribution = attribution
        if maintenance is not None:
            advisories.mailer = lambda: maintenance.mailer        # alerts go through the notices' SMTP relay
        if bridge is not None:
            advisories.set_notice_publisher(bridge)               # NoticePublisher: alerts to mqtt_topic
            bridge.add_link_listener(advisories)                  # NoticeLinkListener


def _first(components: list[Component], kind: type[T]) -> T | None:
    return next((c for c in components if isinstance(c, kind)), None)


def ensure_secret(state_dir: str, name: str, size: int = 32) -> bytes:
    path = Path(state_dir) / name
    if path.exists():
        os.chmod(path, 0o600)
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    data = secrets.token_bytes(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


def prepare_state_dir(state_dir: str) -> tuple[str, bytes]:
    """Create the state directory (0700) with its admin token and pseudonym key (0600)."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    return ensure_token(state_dir), ensure_secret(state_dir, "pseudonym.key")


class Daemon:
    def __init__(self, options: Options, *, clock=None, types: list[type[Component]] | None = None,
                 primary: bool = True):
        self.options = options
        self.primary = primary      # False: a DNS worker process (no listeners, no policy records)
        self.clock = clock or SystemClock()
        self._types = types
        self.policy: Policy | None = None
        self.components: list[Component] = []
        self.commands = CommandRegistry()
        self.registry = CollectorRegistry()
        self.metrics = CoreMetrics(self.registry)
        self.events = EventBus()
        self.started_at = utcnow()
        self.last_reload: dict = {}
        self.last_error: dict | None = None
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._ready = False
        self.http: list = []            # HttpServer and the customer page's Listener

    # -- start / stop ------------------------------------------------------------

    async def run(self) -> int:
        opened = self._open()
        if isinstance(opened, int):
            return opened
        policy, token, store = opened
        started: list[Component] = []
        self._install_signals()   # from here on SIGTERM during start-up still stops cleanly
        try:
            change = await self._start_components(policy, started)
            await self._start_http(token)
            if self.stop_event.is_set():
                return 0
            self._ready = True
            sdnotify.notify("READY=1", f"STATUS=policy {policy.version}")
            log.info("nocpolicyd %s ready: policy %s from %s (%s)", __version__, policy.version,
                     self.options.policies, change.describe(),
                     extra={"fields": {"event": "ready", "policy_version": policy.version}})
            await self._serve()
            return 0
        except NocpolicyError as exc:
            log.error("cannot start: %s", exc)
            return 1
        finally:
            await self._shutdown(started, store)

    def _open(self) -> tuple[Policy, str, Store] | int:
        """Policy, state directory, store and Context; or the exit code when one cannot be had."""
        opts = self.options
        try:
            policy = load_policy(opts.policies)
        except PolicyInvalid as exc:
            for p in exc.problems:
                log.error("policy: %s", p)
            log.error("refusing to start: %d problem(s) in %s", len(exc.problems), opts.policies)
            return 2
        try:
            token, pseudonym = prepare_state_dir(opts.state_dir)
        except OSError as exc:
            log.error("cannot prepare the state directory %s: %s", opts.state_dir, exc.strerror or exc)
            return 1
        try:
            store = Store(Path(opts.state_dir) / "nocpolicy.db")
        except NocpolicyError as exc:
            log.error("%s", exc)
            return 1
        self.ctx = Context(options=opts, store=store, clock=self.clock, events=self.events,
                           registry=self.registry, policy=lambda: self.policy,
                           secrets={"pseudonym": pseudonym},
                           commands=self.commands)
        self.ctx.subscribers = new_subscribers(self.ctx)
        self.registry.register(ComponentCollector(lambda: self.components))
        self.registry.register(EventBusCollector(self.events))
        for cmd in self._core_commands():
            self.commands.register(cmd)
        return policy, token, store

    async def _start_components(self, policy: Policy, started: list[Component]) -> PolicyChange:
        """Build and wire the components, prepare and commit the first policy, start them in order."""
        types = self._types if self._types is not None else component_types(self.options)
        self.components = with_subscribers([t(self.ctx) for t in types], self.ctx.subscribers)
        self.ctx.components.update({c.name: c for c in self.components})
        wire(self.components)
        for c in self.components:
            for cmd in c.commands():
                self.commands.register(cmd)
            for col in c.collectors():
                self.registry.register(col)
        change = diff_policies(None, policy)
        commits = [await c.prepare(policy, change) for c in self.components]
        self._commit(policy, commits, change, source="start")
        # before the listeners open: the collection that precedes the freeze delays nothing
        log.debug("%d start-up objects frozen (gcpause.freeze_start_up)", freeze_start_up())
        for c in self.components:
            await c.start()
            started.append(c)    # only these are stopped
        return change

    async def _serve(self) -> None:
        """Reload, watchdog and (--watch) file-watch loops until stop is asked for."""
        async with asyncio.TaskGroup() as tg:
            loops = [tg.create_task(self._reload_loop(), name="reload"),
                     tg.create_task(self._watchdog_loop(), name="watchdog")]
            if self.options.watch:
                loops.append(tg.create_task(self._watch_loop(), name="watch"))
            await self.stop_event.wait()
            for t in loops:
                t.cancel()

    async def _shutdown(self, started: list[Component], store: Store) -> None:
        self._ready = False
        sdnotify.notify("STOPPING=1")
        log.info("stopping")
        for server in reversed(self.http):
            await server.stop()
        for c in reversed(started):
            try:
                await asyncio.wait_for(c.stop(), timeout=10)
                log.info("stopped %s", c.name)
            except Exception as exc:  # keep stopping the others
                log.error("stopping %s failed: %s", c.name, exc)
        store.close()

    async def _start_http(self, token: str) -> None:
        if not self.primary:
            return
        api = AdminApi(self.commands, token)
        for name, (host, port), handler, gate in (
                ("metrics", self.options.metrics_listen, metrics_handler(self.registry, self.ready), None),
                ("admin API", self.options.admin_listen, api.handle, api.authorize)):
            server = HttpServer(name, host, port, handler, before_body=gate)
            try:
                await server.start()
            except OSError as exc:
                raise NocpolicyError(f"{name} cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
            self.http.append(server)
        page = customer_listener(self.options, self.commands,          # off unless --customer-listen
                                 tz=lambda: self.policy.settings.timezone)
        if page is not None:
            try:
                await page.start()
            except OSError as exc:
                raise NocpolicyError(f"customer page cannot listen on {page.host}:{page.port}: "
                                     f"{exc.strerror or exc}") from exc
            self.http.append(page)

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload_event.set)
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)

    def ready(self) -> tuple[bool, str]:
        if not self._ready:
            return False, "starting or stopping"
        down = [c.name for c in self.components if not c.up]
        return (not down, f"components not up: {', '.join(down)}")

    # -- reload ------------------------------------------------------------------

    async def reload(self, source: str, *, dry_run: bool = False, actor: str = "daemon") -> dict:
        async with self._reload_lock:
            return await self._reload(source, dry_run, actor)

    async def _reload(self, source: str, dry_run: bool, actor: str) -> dict:
        old = self.policy
        try:
            lagtrace.mark("load policy")
            new = await asyncio.to_thread(load_policy, self.options.policies, previous=self.policy)
            lagtrace.mark("load policy done")
        except Exception as exc:  # PolicyInvalid, or a bug: refuse either way, keep serving
            if isinstance(exc, PolicyInvalid):
                errors = [str(p) for p in exc.problems]
            else:
                log.exception("loading %s failed", self.options.policies)
                errors = [f"{self.options.policies}: internal error while loading the policy: {exc!r}"]
            if dry_run:  # a dry run only reports; it does not count as a refused reload
                return {"ok": False, "dry_run": True, "errors": errors,
                        "version": old.version if old else None}
            return self._refused(source, errors)
        change = diff_policies(old, new)
        if dry_run:
            out = {}
            for c in self.components:
                text = await c.dry_run(new, change)
                if text:
                    out[c.name] = text
            return {"ok": True, "dry_run": True, "version": new.version, "change": change.as_dict(),
                    "summary": change.describe(), "components": out}
        if old is not None and new.version == old.version:
            # Files back to the policy in force: an earlier refusal no longer applies. Otherwise
            # keep showing the last real change (the watcher often finds nothing new).
            self.metrics.policy_unchanged(wall())
            if self.last_error is not None:
                self.last_error = None
                self.last_reload = {"ok": True, "source": source, "version": new.version,
                                    "at": utcnow().isoformat(), "summary": "no change"}
            return {"ok": True, "changed": False, "version": new.version, "summary": "no change"}
        sdnotify.notify("RELOADING=1")
        try:
            commits: list = []
            for c in self.components:
                try:
                    lagtrace.mark(f"prepare {c.name}")
                    commits.append(await c.prepare(new, change))
                except NocpolicyError as exc:
                    await self._abandon(self.components[:len(commits)])
                    return self._refused(source, [f"{c.name}: {exc}"])
                except Exception as exc:  # a bug in a component must not take the daemon down
                    log.exception("%s: prepare failed", c.name)
                    await self._abandon(self.components[:len(commits)])
                    return self._refused(source, [f"{c.name}: internal error: {exc!r}"])
            lagtrace.mark("commit")
            self._commit(new, commits, change, source=source, actor=actor)
            lagtrace.mark("commit done")
        finally:
            sdnotify.notify("READY=1", f"STATUS=policy {self.policy.version}")
        return {"ok": True, "changed": True, "version": new.version, "previous": old.version if old else None,
                "summary": change.describe(), "change": change.as_dict()}

    async def _abandon(self, prepared: list[Component]) -> None:
        """A refused reload: the components that had prepared it release what they staged."""
        for c in prepared:
            try:
                await c.abandon()
            except Exception:  # keep telling the others
                log.exception("%s: abandoning the refused policy failed", c.name)

    def _commit(self, policy: Policy, commits, change, *, source: str, actor: str = "daemon") -> None:
        for commit in commits:
            if commit is not None:
                commit()
        for c in self.components:      # a failing background loop gets its retry under the new policy now
            c.tasks.kick()
        old = self.policy
        self.policy = policy
        now = wall()
        self.metrics.policy_loaded(policy.version, now)
        self.last_reload = {"ok": True, "source": source, "version": policy.version,
                            "at": dt.datetime.fromtimestamp(now, dt.UTC).isoformat(),
                            "summary": change.describe()}
        self.last_error = None
        if old is not None:
            log.info("policy %s -> %s (%s): %s", old.version, policy.version, source, change.describe(),
                     extra={"fields": {"event": "policy.reload", "old_version": old.version,
                                       "policy_version": policy.version, "source": source}})
        if self.primary:
            self._record(policy, old, change, source, actor)
        self.events.publish("reload", {"ok": True, "version": policy.version, "source": source,
                                       "summary": change.describe()})

    def _record(self, policy: Policy, old: Policy | None, change, source: str, actor: str) -> None:
        try:
            self.ctx.store.put("policy.last_good", {"version": policy.version, "at": self.last_reload["at"]})
            if old is not None:
                self.ctx.store.audit(actor, "policy.reload", "policy", {"version": old.version},
                                     {"version": policy.version, "source": source, "change": change.as_dict()})
            else:  # which policy was in force from when: evidence for Art. 23/24 questions later
                self.ctx.store.audit(actor, "policy.load", "policy", None,
                                     {"version": policy.version, "source": source, "files": list(policy.files)})
        except NocpolicyError as exc:  # the new policy is in force; say loudly that the record is missing
            log.error("policy %s is in force but could not be recorded in the state store: %s",
                      policy.version, exc)

    def _refused(self, source: str, errors: list[str]) -> dict:
        self.metrics.policy_refused()
        at = utcnow().isoformat()
        self.last_error = {"source": source, "at": at, "errors": errors}
        self.last_reload = {"ok": False, "source": source, "at": at}
        for e in errors:
            log.error("reload refused: %s", e)
        log.error("reload (%s) refused with %d problem(s); still serving policy %s", source, len(errors),
                  self.policy.version if self.policy else "-",
                  extra={"fields": {"event": "policy.refused", "source": source, "problems": len(errors),
                                    "policy_version": self.policy.version if self.policy else None}})
        self.events.publish("reload", {"ok": False, "source": source, "errors": len(errors)})
        return {"ok": False, "errors": errors,
                "version": self.policy.version if self.policy else None}

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_event.wait()
            self.reload_event.clear()
            await self._reload_safely("SIGHUP")

    async def _reload_safely(self, source: str) -> None:
        """A reload from a loop: whatever goes wrong is logged; the loop and the daemon go on."""
        try:
            await self.reload(source)
        except Exception:
            log.exception("reload (%s) failed unexpectedly; still serving policy %s", source,
                          self.policy.version if self.policy else "-")

    async def _watch_loop(self) -> None:
        last = _snapshot(self.options.policies, self.options.state_dir)
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = _snapshot(self.options.policies, self.options.state_dir)
            if now == last:
                continue
            while True:  # debounce: wait until an editor has finished writing
                await asyncio.sleep(WATCH_DEBOUNCE)
                settled = _snapshot(self.options.policies, self.options.state_dir)
                if settled == now:
                    break
                now = settled
            last = now
            await self._reload_safely("file change")

    async def _watchdog_loop(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            await asyncio.Event().wait()
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- commands ----------------------------------------------------------------

    def _core_commands(self) -> list[Command]:
        async def status(args: Args, inv: Invocation) -> dict:
            args.check()
            return self.status()

        async def reload(args: Args, inv: Invocation) -> dict:
            dry = args.get("dry_run", as_bool, False)
            args.check()
            return await self.reload("nocpolicyctl" if inv.source == "admin-api" else inv.source,
                                     dry_run=dry, actor=inv.actor)

        async def audit(args: Args, inv: Invocation) -> dict:
            limit = args.get("limit", int_range(1, 10_000), 50)
            subject = args.get("subject", lambda n, p=None: str(n.value), None)
            args.check()
            return {"audit": self.ctx.store.audit_log(subject=subject, limit=max(1, min(limit, 1000)))}

        return [Command("status", status, "daemon, policy and component status", mutating=False),
                Command("reload", reload, "reload the policy directory (dry_run: show the diff only)"),
                Command("audit", audit, "recent audit records (subject, limit)", mutating=False)]

    def status(self) -> dict:
        p = self.policy
        return {
            "daemon": {"version": __version__, "pid": os.getpid(), "started_at": self.started_at.isoformat(),
                       "role": self.options.role, "node": self.options.node or (p.settings.node if p else None),
                       "state_dir": str(Path(self.options.state_dir).resolve()),
                       "policies": str(Path(self.options.policies).resolve())},
            "policy": p.summary() if p else None,
            "last_reload": self.last_reload,
            "last_error": self.last_error,
            "components": {c.name: c.status() for c in self.components},
        }


def _snapshot(directory: str, state_dir: str | None = None):
    """Name, mtime and size of every file under the policy directory (YAML and list files)."""
    skip = os.path.realpath(state_dir) if state_dir else None   # a state dir inside it changes constantly
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(root, d)) != skip)
        for name in sorted(files):
            if name.startswith(".") or name.endswith(("~", ".swp", ".swx")):
                continue
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            out.append((os.path.join(root, name), st.st_mtime_ns, st.st_size))
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    setup_logging(options.log_format, options.log_level)
    # A thread doing CPU work (a qos re-render of every live session, a policy load) holds the
    # GIL until asked to drop it; the event loop, which releases it for every recvmmsg, sendmmsg
    # and epoll_wait, then waits up to this long to get it back each time. Python's 5 ms left
    # the loop ~30 % of a shared core during a re-render; 0.5 ms gives it ~50 % (bench/README).
    sys.setswitchinterval(SWITCH_INTERVAL)
    faulthandler.enable()    # a crash in C code (ctypes, uvloop, sqlite) leaves every thread's stack in the log
    # No `_created` series: Prometheus does not use them and they double every counter.
    prometheus_client.disable_created_metrics()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(Daemon(options).run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
