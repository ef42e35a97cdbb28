"""The qos component: emergency priority and utilisation limits (Art. 23(1)).

Modes (``--enforce``): ``linux`` needs root, nft, tc and every interface the
policy names (else the daemon refuses to start); ``auto`` enforces when it can
and otherwise runs *plan-only* (state "disabled" with the reason: emergencies
are still declared, audited and rendered, nothing reaches the kernel); ``off``
is always plan-only.

Stop/start (see docs/qos.md): stop puts the *normal* plan back (caps stay, an
emergency's priority rules go, because a stopped daemon cannot expire them); the
emergency stays in the store and start re-applies it unless it has expired
(then it is lifted with an audit record).

What the fleet relies on (``interfaces.FleetQos``, handed to it in app.py): ``plan``
(the Plan the kernel holds), ``backend`` (LinuxBackend or None), ``plan_only_reason``,
``active_emergency()`` and ``adopt_plan()`` (apply a plan decided by the controller,
under the same lock as every other apply, counted like them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil

from prometheus_client import Histogram

from ..component import Component
from ..control.commands import Args, Command, Invocation
from ..errors import Conflict, DomainError, EnforcementError, Invalid, NocpolicyError
from ..gcpause import gc_paused
from ..policy.fields import MAX_DURATION, as_bool, as_datetime, as_id, as_text, list_of
from .counters import QosCollector, Usage, read_usage
from .emergency import EmergencyStore, Record
from .features import Features, detect
from .kernel import has_net_admin
from .plan import (
    Emergency,
    Plan,
    Static,
    TooManyClasses,
    build_plan,
    build_static,
    check_class_limit,
)
from .render import diff_lines, render_nft, render_tc
from .subjects import kept_live, subjects_of
from .untouched import MAX_CHANGES, OVER_LIMIT, PLANNED, plan_untouched

log = logging.getLogger(__name__)

COUNTER_INTERVAL = 10.0
RERENDER_INTERVAL = 1.0       # at most one re-render per second on subscriber changes (bursts coalesce)
RERENDER_SHARE = 0.1          # re-renders take at most this share of the time (a slow one spaces the next)
RERENDER_RETRY = 10.0         # after an apply the kernel refused (rolled back), try again this much later
EXPIRY_CHECK = 1.0
NETNS_ENV = "NOCPOLICY_NETNS"


async def _release(garbage: list) -> None:
    """Drop the last references to the objects in ``garbage`` in a worker thread. A plan with
    many live sessions is an object graph with a class, an entry and a subject per customer:
    freeing the previous one on the event loop took a third of a re-render, with the loop
    stopped; in a thread the loop gets the GIL back every SWITCH_INTERVAL (app.py). The
    caller holds no other reference."""
    await asyncio.to_thread(garbage.clear)


class Enforcer(Component):
    name = "qos"

    def __init__(self, ctx):
        super().__init__(ctx)
        extra = ctx.options.extra or {}
        self.netns = extra.get("netns") or os.environ.get(NETNS_ENV) or None
        self.customer_metrics = bool(extra.get("customer_metrics"))
        self.counter_interval = float(extra.get("qos_counter_interval") or COUNTER_INTERVAL)
        self.rerender_interval = float(extra.get("qos_rerender_interval") or RERENDER_INTERVAL)
        self.emergencies = EmergencyStore(ctx.store)
        self.policy = None
        self.plan: Plan | None = None
        self.static: Static | None = None          # the policy-only part of the plan, reused per emergency
        self.backend = None
        self.backend_name = "none"
        self.features = Features(False, detail="not detected yet")
        self.plan_only_reason = ""
        self.errors = 0
        self.last_apply: dict | None = None
        self.last_error: str | None = None
        self.enforcing = 0
        self._lock = asyncio.Lock()
        self._view = None                      # the subscriber view (pushed by the subscribers area)
        self._dirty = asyncio.Event()          # the view changed since the last re-render
        self._plan_listeners: list = []        # called when a re-render changed the plan (fleet controller)
        self._last_rerender = float("-inf")
        self.last_rerender_seconds: float | None = None      # how long the last re-render took
        self._adopted = False                  # a fleet agent holds a plan decided by its controller
        self.rerenders = {"applied": 0, "unchanged": 0, "refused": 0, "failed": 0, "untouched": 0}
        # what the last re-render planned from (untouched.py): PLANNED, OVER_LIMIT or None, for
        # which policy; and the session changes since (None: something else changed too)
        self._basis: tuple[str, object] | None = None
        self._since: list | None = []
        self._usage = Usage()
        self._class_acc: dict = {}
        self._cust_acc: dict = {}
        self._cust_up_acc: dict = {}
        self._last_cust_up: dict = {}
        self._last_raw: dict = {}
        self._last_cust: dict = {}
        self.apply_seconds = Histogram("nocpolicy_enforcement_apply_duration_seconds",
                                       "Time to apply and verify an enforcement plan",
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                                       registry=ctx.registry)
        self.walled = None                         # walled.WalledTable once a backend is chosen
        self._walled_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------

    async def prepare(self, policy, change):
        active = self.emergencies.active()
        emergency = self._as_emergency(active) if active else None
        if emergency is not None and emergency.profile not in policy.profiles_by_id:
            raise NocpolicyError(f"emergency profile {emergency.profile!r} is in use by the active emergency "
                                 "(lift it first, or keep the profile)")
        if self.backend is None and self.plan_only_reason == "":
            await self._choose_backend(policy)
        live = self._view.live_addresses() if self._view is not None else None
        try:
            static = await asyncio.to_thread(self._static_for, policy, live)
            plan = build_plan(policy, emergency, leaf=self.features.leaf, static=static)
        except (ValueError, EnforcementError) as exc:
            raise NocpolicyError(f"qos: {exc}") from None
        if self.backend is not None:
            missing = await asyncio.to_thread(self._missing_interfaces, policy)
            if missing:
                raise NocpolicyError(f"qos: interface(s) {', '.join(missing)} named by the policy do not exist "
                                     f"{'in netns ' + self.netns if self.netns else 'here'}")

        def commit():
            self.policy, self.plan, self.static = policy, plan, static
            self._adopted = False
            self._basis = None
            if self.state in ("running", "disabled", "failed") and self.backend is not None:
                self.tasks.spawn("apply", self._apply_logged(plan, "reload"))
                self.tasks.spawn("walled", self.enforce_suspensions())    # suspension.* may have changed
        return commit

    async def start(self) -> None:
        if self.backend is not None:
            await self._expire_if_due()
            try:
                await self._apply(self.plan)
            except EnforcementError as exc:
                self.set_state("failed", f"cannot apply the rules: {exc}")
                raise NocpolicyError(f"qos: cannot apply the rules: {exc}") from None
            self.set_state("running", f"enforcing on {', '.join(t.name for t in self.plan.interfaces)} "
                                      f"({self.features.detail}){' in netns ' + self.netns if self.netns else ''}")
            self.tasks.supervise("counters", self._counter_loop)
            self.tasks.supervise("rerender", self._rerender_loop)
            await self.enforce_suspensions()
        else:
            await self._expire_if_due()
            self.set_state("disabled", f"plan-only, nothing is enforced: {self.plan_only_reason}")
            self.tasks.supervise("rerender", self._rerender_loop)
        self.tasks.supervise("expiry", self._expiry_loop)

    async def stop(self) -> None:
        await self.tasks.close()
        if self.backend is not None and self.policy is not None and self.plan is not None \
                and self.plan.emergency is not None:
            try:   # a stopped daemon cannot expire an emergency: leave the normal caps only
                await self._apply(build_plan(self.policy, None, leaf=self.features.leaf, static=self.static))
                log.info("qos: stopped; emergency rules taken out, normal caps left in place")
            except EnforcementError as exc:
                log.error("qos: could not take the emergency rules out on stop: %s", exc)
        self.set_state("stopped")

    async def dry_run(self, policy, change) -> str | None:
        active = self.emergencies.active()
        live = self._view.live_addresses() if self._view is not None else None
        try:
            static = self._static_for(policy, live)
            new = build_plan(policy, self._as_emergency(active) if active else None, leaf=self.features.leaf,
                             static=static)
        except (ValueError, EnforcementError) as exc:
            return f"refused: {exc}"
        added, removed = diff_lines(self.plan, new)
        if not added and not removed:
            return "no rule changes"
        return "\n".join([f"+ {x}" for x in added] + [f"- {x}" for x in removed])

    # -- backend -----------------------------------------------------------------

    async def _choose_backend(self, policy) -> None:
        mode = self.ctx.options.enforce
        if mode == "off":
            self.plan_only_reason = "--enforce off"
            return
        why = self._cannot_enforce()
        if why is None:
            self.features = await asyncio.to_thread(detect)
            from .apply import LinuxBackend
            backend = LinuxBackend(self.netns)
            try:
                have = await asyncio.to_thread(backend.runner.links)
            except EnforcementError as exc:
                have, why = set(), str(exc)
            missing = [i.name for i in policy.interfaces if i.name not in have]
            if why is None and not policy.interfaces:
                why = "the policy names no interfaces to shape"
            elif why is None and missing:
                why = (f"interface(s) {', '.join(missing)} named by the policy do not exist "
                       f"{'in netns ' + self.netns if self.netns else 'on this host'}")
            if why is None:
                self.backend, self.backend_name, self.enforcing = backend, "linux", 1
                return
        if mode == "linux":
            raise NocpolicyError(f"qos: --enforce linux, but {why}")
        self.plan_only_reason = why

    def _cannot_enforce(self) -> str | None:
        if not has_net_admin():
            return "no CAP_NET_ADMIN (run as root, or give the service AmbientCapabilities=CAP_NET_ADMIN)"
        for tool in ("nft", "tc", "ip"):
            if shutil.which(tool) is None:
                return f"{tool} is not installed"
        return None

    def _missing_interfaces(self, policy) -> list[str]:
        have = self.backend.runner.links()
        return [i.name for i in policy.interfaces if i.name not in have]

    async def _apply(self, plan: Plan) -> dict | None:
        if self.backend is None:
            return None
        try:
            result = await asyncio.to_thread(self.backend.apply, plan)
        except EnforcementError as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.error("qos: apply failed: %s", exc)
            raise
        self.apply_seconds.observe(result.seconds)
        self.last_apply = result.as_dict()
        self.last_error = None
        return self.last_apply

    async def adopt_plan(self, plan: Plan) -> dict:
        """Apply a plan decided elsewhere (a fleet agent's retained plan) and hold it as current
        (subscriber changes no longer re-render it here until the next policy commit)."""
        async with self._lock:
            result = await self._apply(plan)
            self.plan = plan
            self._adopted = True
            return result or {}

    async def _apply_logged(self, plan: Plan, why: str) -> None:
        async with self._lock:
            try:
                await self._apply(plan)
            except EnforcementError:
                pass   # rolled back; counted and shown in status

    # -- the subscriber view ----------------------------------------------------------

    def on_plan_change(self, fn) -> None:
        """FleetQos: call ``fn()`` when a re-render (sessions, runtime decisions such as a throttle
        suspension) changed the plan, so a fleet controller sends it to its agents."""
        self._plan_listeners.append(fn)

    def use_subscribers(self, source) -> None:
        """Plan from the subscribers area's view (``subscribers.api.SubscriberSource``, handed in
        app.wire): live sessions and runtime decisions reach tc/nft."""
        source.watch(self._view_changed)

    def _view_changed(self, view, change) -> None:
        self._view = view            # a watcher only swaps references: the loop below does the work
        since = self._since
        if since is not None:
            if change.sessions and len(since) + len(change.sessions) <= MAX_CHANGES:
                since.extend(change.sessions)
            else:
                self._since = None   # a decision, a policy, or too many: re-render in full
        self._dirty.set()

    def _untouched(self, since: list | None) -> bool:
        """Can none of the session changes ``since`` the last re-render alter its outcome
        (untouched.py)? Then the re-render is skipped."""
        view, basis = self._view, self._basis
        if since is None or basis is None or basis[1] is not self.policy or self._adopted or view is None:
            return False
        suspended = view.suspended
        if suspended and any(c[2] in suspended for c in since):
            return False             # the walled-garden table follows a suspended customer's sessions
        return plan_untouched(basis[0], self.policy, view, since, getattr(view.prefixes, "live", None),
                              bool(self.features.redirect))

    def _static_for(self, policy, live) -> Static:
        """The policy-and-subscribers part of the plan (pure; run in a thread). Class ids of the
        plan in force are kept (a session adds or removes one class, renumbers none)."""
        with gc_paused():          # a subject per live customer (a million sessions): see gcpause
            view, redirect, subjects = self._view, self.features.redirect, None
            if view is not None:
                kept = kept_live(policy, live if live is not None else view.live_addresses())
                check_class_limit(policy, view, kept, bool(redirect))    # over the limit: fail before the text
                subjects = subjects_of(policy, view, kept=kept)
            return build_static(policy, subjects, self.static, redirect=redirect)

    async def _rerender_loop(self) -> None:
        """Re-render on view changes, at most once per ``rerender_interval``: a burst of changes
        (a RADIUS storm) is one apply, the first change after a quiet spell goes out at once."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            since, self._since = self._since, []
            if self._untouched(since):     # checked at once: changes do not pile up behind the wait
                self.rerenders["untouched"] += 1
                continue
            wait = self._last_rerender + self.rerender_interval - self.ctx.clock.monotonic()
            if wait > 0:
                await self.ctx.clock.sleep(wait)
            self._dirty.clear()              # what came meanwhile is in this re-render's snapshot
            self._since = []
            self._last_rerender = began = self.ctx.clock.monotonic()
            outcome = await self.rerender()
            # a re-render walks every live session: with many it takes long, and back to back
            # it would starve the session sources; the next starts >= took / RERENDER_SHARE later
            took = self.last_rerender_seconds = self.ctx.clock.monotonic() - began
            self._last_rerender = began + max(0.0, took / RERENDER_SHARE - self.rerender_interval)
            await self.enforce_suspensions()     # a suspended customer's session came or went
            if outcome == "failed":              # changes meanwhile coalesce into the retry
                await self.ctx.clock.sleep(RERENDER_RETRY)
                self._dirty.set()

    async def rerender(self) -> str:
        """Plan from the current policy and view and apply it if it differs (render -> apply ->
        read back, rolled back on failure). A refused plan (the class limit) or a failed apply
        keeps the rules in force. Returns what happened."""
        async with self._lock:
            policy, self._basis = self.policy, None
            if policy is None or self._view is None or self._adopted:
                return "skipped"
            active = self.emergencies.active()
            live = self._view.live_addresses()          # a snapshot, taken on the event loop
            try:
                static = await asyncio.to_thread(self._static_for, policy, live)
                plan = build_plan(policy, self._as_emergency(active) if active else None,
                                  leaf=self.features.leaf, static=static)
            except (ValueError, EnforcementError) as exc:
                if isinstance(exc, TooManyClasses):
                    self._basis = (OVER_LIMIT, policy)
                return self._rerender_done("refused", f"plan refused, the rules in force stay: {exc}")
            garbage = [live]          # what this re-render leaves behind, freed off the loop
            del live
            if plan == self.plan:
                outcome = "unchanged"
                if self.policy is policy:
                    garbage.append(self.static)
                    self.static, self._basis = static, (PLANNED, policy)
            else:
                try:
                    await self._apply(plan)
                except EnforcementError:
                    return self._rerender_done("failed")     # rolled back; counted, last_error says why
                outcome = "applied"
                if self.policy is policy:    # else a reload committed meanwhile; its own apply follows
                    garbage += (self.plan, self.static)
                    self.plan, self.static, self._basis = plan, static, (PLANNED, policy)
                    for fn in self._plan_listeners:
                        fn()
            garbage += (plan, static)
            del plan, static
            await _release(garbage)
            return self._rerender_done(outcome)

    def _rerender_done(self, outcome: str, error: str | None = None) -> str:
        self.rerenders[outcome] += 1
        if error is not None:
            self.errors += 1
            self.last_error = error
            log.error("qos: %s", error)
        return outcome

    # -- emergencies ---------------------------------------------------------------

    async def enforce_suspensions(self) -> dict:
        """SuspensionEnforcer (interfaces.py): make table inet nocpolicy_suspend match the suspensions in
        the subscriber view now (walled-garden and block: drop all but DNS, the notice page, the allow
        list). Failures are logged and counted, the previous rules stay; the answer says what happened."""
        from .walled import WalledTable, walled_plan
        if self.backend is None or self.ctx.subscribers is None or self.policy is None:
            return {"enforced": False, "reason": self.plan_only_reason or "no enforcement backend"}
        if self.walled is None:
            self.walled = WalledTable(self.backend.runner)
        view = self.ctx.subscribers.view
        plan = walled_plan(self.policy, view, view.live_addresses())      # snapshot on the event loop
        async with self._walled_lock:
            try:
                await asyncio.to_thread(self.walled.apply, plan)
            except EnforcementError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.error("qos: suspensions not enforced in nftables: %s", exc)
                return {"enforced": False, "reason": str(exc)}
        return {"enforced": True, "walled_prefixes": len(plan.walled), "blocked_prefixes": len(plan.blocked)}

    def active_emergency(self) -> dict | None:
        """The declared emergency as ``emergency.status`` shows it, or None (the fleet plan carries it)."""
        rec = self.emergencies.active()
        return rec.as_dict(self._max_duration(rec.profile)) if rec else None

    def _as_emergency(self, rec: Record) -> Emergency:
        return Emergency(rec.profile, rec.scope, rec.reason)

    def _max_duration(self, profile: str) -> float | None:
        p = self.policy.profiles_by_id.get(profile) if self.policy else None
        return p.max_duration if p else None

    async def declare(self, *, profile: str, scope, reason: str, until, actor: str, dry_run: bool) -> dict:
        """All or nothing: everything that can be refused is checked before the kernel or the
        store changes; a store failure after the apply puts the previous rules back."""
        async with self._lock:
            now = self.ctx.clock.now()
            if until is not None and until <= now:
                raise Invalid(f"until {until.isoformat()} is in the past", field="until")
            try:
                new = await asyncio.to_thread(build_plan, self.policy, Emergency(profile, tuple(scope), reason),
                                              leaf=self.features.leaf, static=self.static)
            except ValueError as exc:
                raise Invalid(str(exc)) from None
            maxdur = self._max_duration(profile)
            if maxdur is not None and not 0 < maxdur <= MAX_DURATION:
                raise Invalid(f"profile {profile}: max_duration {maxdur:g}s is outside the sane range "
                              "(fix the policy)", field="profile")
            added, removed = await asyncio.to_thread(diff_lines, self.plan, new)
            out = {"profile": profile, "enforced": self.backend is not None, "added": added, "removed": removed}
            if dry_run:
                return {**out, "dry_run": True, "nft": render_nft(new)}
            before = self.emergencies.active()
            applied = await self._apply(new)
            try:
                rec = self.emergencies.declare(
                    profile=profile, scope=scope, reason=reason, actor=actor, now=now, until=until,
                    audit_before={"emergency": before.as_dict(), "rules_removed": removed} if before else None,
                    audit_after={"reason": reason, "scope": list(scope),
                                 "until": until.isoformat() if until else None, "rules_added": added,
                                 "rules_removed": removed, "enforced": self.backend is not None})
            except Exception:
                await self._restore(self.plan)
                raise
            self.plan = new
            info = rec.as_dict(self._max_duration(profile))
            self.ctx.events.publish("emergency", {"action": "declare", **info, "enforced": self.backend is not None})
            return {**out, "emergency": info, "apply": applied, "note": self._note()}

    async def _restore(self, plan: Plan | None) -> None:
        """Put ``plan`` back in the kernel after a later step of a command failed."""
        if plan is None:
            return
        try:
            await self._apply(plan)
        except EnforcementError as exc:
            log.error("qos: could not put the previous rules back: %s", exc)

    async def lift(self, *, actor: str, reason: str, action: str = "emergency.lift") -> dict:
        async with self._lock:
            rec = self.emergencies.active()
            if rec is None:
                raise Conflict("no emergency is active")
            new = build_plan(self.policy, None, leaf=self.features.leaf, static=self.static)
            added, removed = await asyncio.to_thread(diff_lines, self.plan, new)
            applied = await self._apply(new)
            try:
                self.emergencies.end(rec, actor=actor, reason=reason, now=self.ctx.clock.now(), action=action,
                                     audit_before={"emergency": rec.as_dict(self._max_duration(rec.profile))},
                                     audit_after={"reason": reason, "rules_added": added,
                                                  "rules_removed": removed, "enforced": self.backend is not None})
            except Exception:
                await self._restore(self.plan)
                raise
            self.plan = new
            self.ctx.events.publish("emergency", {"action": "expire" if action == "emergency.expire" else "lift",
                                                  "profile": rec.profile, "id": rec.id, "reason": reason})
            return {"lifted": rec.as_dict(), "added": added, "removed": removed, "apply": applied,
                    "enforced": self.backend is not None, "note": self._note()}

    def _note(self) -> str:
        if self.backend is None:
            return f"plan-only: nothing is enforced ({self.plan_only_reason})"
        return "enforced in the kernel"

    def directions(self) -> dict[str, str]:
        """Per direction, whether its caps reach the kernel (and if not, why)."""
        if self.backend is None:
            off = f"not enforced: plan-only ({self.plan_only_reason})"
            return {"download": off, "upload": off}
        if self.plan is not None and self.plan.uploads:
            up = f"enforced (ifb, {self.plan.redirect} redirect, {len(self.plan.up_caps)} prefix filter(s))"
            dropped = self.static.up_dropped if self.static is not None else 0
            if dropped:
                up = f"partly enforced: {dropped} address(es) past the u32 filter limit have no upload cap; {up}"
        elif self.features.upload_missing():
            up = f"not enforced: {self.features.upload_missing()}"
        else:
            up = "not enforced: no customer has an up cap below the link rate"
        return {"download": "enforced", "upload": up}

    async def _expire_if_due(self) -> None:
        rec = self.emergencies.active()
        if rec is None:
            return
        end = rec.ends_at(self._max_duration(rec.profile))
        if end is not None and self.ctx.clock.now() >= end:
            log.info("qos: emergency %s (%s) expired at %s", rec.id, rec.profile, end.isoformat())
            await self.lift(actor="daemon", reason=f"expired at {end.isoformat()}", action="emergency.expire")

    async def _expiry_loop(self) -> None:
        while True:
            await self.ctx.clock.sleep(EXPIRY_CHECK)
            try:
                await self._expire_if_due()
            except (EnforcementError, DomainError) as exc:
                log.error("qos: expiry failed, will retry: %s", exc)

    # -- utilisation ---------------------------------------------------------------

    async def _counter_loop(self) -> None:
        while True:
            await self.refresh_usage()
            await asyncio.sleep(self.counter_interval)

    async def refresh_usage(self) -> None:
        if self.backend is None or self.plan is None:
            return
        try:
            u, _ = await asyncio.to_thread(read_usage, self.backend, self.plan, self._usage,
                                           self.ctx.clock.monotonic())
        except (EnforcementError, ValueError) as exc:
            log.warning("qos: cannot read counters: %s", exc)
            return
        _accumulate(self._class_acc, self._last_raw, u.classes)
        _accumulate(self._cust_acc, self._last_cust, u.customers)
        _accumulate(self._cust_up_acc, self._last_cust_up, u.customers_up)
        self._usage = u

    def class_totals(self) -> dict:
        return self._class_acc

    def customer_totals(self) -> dict:
        return self._cust_acc

    def usage_snapshot(self) -> Usage:
        return self._usage

    def active_profile(self) -> str | None:
        rec = self.emergencies.active()
        return rec.profile if rec else None

    def profiles(self) -> list[str]:
        return sorted(self.policy.profiles_by_id) if self.policy else []

    # -- wiring ------------------------------------------------------------------

    def collectors(self) -> list:
        return [QosCollector(self)]

    def status(self) -> dict:
        return {**super().status(), "backend": self.backend_name, "netns": self.netns,
                "features": self.features.as_dict(), "emergency": self.active_profile(),
                "errors": self.errors, "last_error": self.last_error, "rerenders": dict(self.rerenders),
                "last_rerender_seconds": self.last_rerender_seconds,
                "directions": self.directions()}

    def commands(self) -> list[Command]:
        return [
            Command("emergency.declare", self._cmd_declare,
                    "declare an emergency (profile, scope?, reason, until?, dry_run?)"),
            Command("emergency.lift", self._cmd_lift, "lift the active emergency (reason?)"),
            Command("emergency.status", self._cmd_status, "the active emergency, enforcement state, history",
                    mutating=False),
            Command("usage", self._cmd_usage, "utilisation per class and customer; customers at their cap",
                    mutating=False),
        ]

    async def _cmd_declare(self, args: Args, inv: Invocation) -> dict:
        tz = self.policy.settings.timezone if self.policy else "Asia/Tokyo"
        profile = args.req("profile", as_id)
        scope = args.get("scope", list_of(as_id, unique=True), ()) or ()
        reason = args.req("reason", as_text)
        until = args.get("until", lambda n, p=None: as_datetime(n, p, tz), None)
        dry = args.get("dry_run", as_bool, False)
        args.check()
        return await self.declare(profile=profile, scope=scope, reason=reason, until=until, actor=inv.actor,
                                  dry_run=dry)

    async def _cmd_lift(self, args: Args, inv: Invocation) -> dict:
        reason = args.get("reason", as_text, "") or "lifted by operator"
        args.check()
        return await self.lift(actor=inv.actor, reason=reason)

    async def _cmd_status(self, args: Args, inv: Invocation) -> dict:
        args.check()
        return {"active": self.active_emergency(),
                "enforced": self.backend is not None, "note": self._note(), "directions": self.directions(),
                "backend": self.backend_name, "netns": self.netns, "features": self.features.as_dict(),
                "interfaces": [{"name": t.name, "rate": t.rate, "classes": len(t.classes)}
                               for t in (self.plan.interfaces if self.plan else ())],
                "last_apply": self.last_apply, "last_error": self.last_error,
                "history": self.emergencies.history(10)}

    async def _cmd_usage(self, args: Args, inv: Invocation) -> dict:
        args.check()
        await self.refresh_usage()
        u = self._usage
        return {"enforced": self.backend is not None, "note": self._note(), "directions": self.directions(),
                "classes": [{"interface": i, "class": c, "bytes": v[0], "packets": v[1], "drops": v[2]}
                            for (i, c), v in sorted(self._class_acc.items())],
                "customers": [{"customer": k, "bytes": v[0], "packets": v[1]}
                              for k, v in sorted(self._cust_acc.items())],
                "customers_up": [{"customer": k, "bytes": v[0], "packets": v[1]}
                                 for k, v in sorted(self._cust_up_acc.items())],
                "over_limit": u.over_limit}

    def rendered(self) -> dict:
        """The current plan as text (for tests and debugging)."""
        return {"nft": render_nft(self.plan), "tc": render_tc(self.plan)} if self.plan else {}


def _accumulate(acc: dict, last: dict, now: dict) -> None:
    """Kernel counters reset when rules are replaced: add deltas, a smaller reading is a reset."""
    for key, vals in now.items():
        prev = last.get(key)
        tot = acc.setdefault(key, [0] * len(vals))
        for i, v in enumerate(vals):
            p = prev[i] if prev else 0
            tot[i] += v - p if v >= p else v
        last[key] = list(vals)


def _utc(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()
