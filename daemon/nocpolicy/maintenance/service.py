"""Window operations on the store: create, update, cancel, timed transitions, notice queueing.

Every change is one transaction holding the window row, its outbox rows and an
audit record, so a notice exists if and only if the change that caused it does.
Events for the control plane are returned to the caller and published after commit.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from ..errors import Conflict, Invalid, NotFound
from ..policy.model import Policy
from . import contacts, outbox, windows
from .deadline import check_notice
from .lifecycle import FINAL, NOTICE_FOR, TransitionRefused, due_event, next_state, next_wake
from .notice import NoticeData
from .scope import Span, affected, describe, objects, overlaps
from .windows import WindowRecord

log = logging.getLogger(__name__)


@dataclass
class Change:
    window: WindowRecord
    events: list[tuple[str, dict]] = field(default_factory=list)
    notices: int = 0


class Service:
    def __init__(self, store, clock, policy, notices):
        self.store, self.clock, self.policy = store, clock, policy   # policy: () -> Policy
        self.notices = notices                                       # the notice Outbox (channels)

    # -- reading -------------------------------------------------------------------------------

    @property
    def tz(self) -> str:
        return self.policy().settings.timezone

    def all(self) -> dict[str, WindowRecord]:
        with self.store.transaction() as db:
            return windows.load_all(db)

    def get(self, window_id: str) -> WindowRecord:
        with self.store.transaction() as db:
            w = windows.load(db, window_id)
        if w is None:
            raise NotFound(f"no maintenance window {window_id!r}")
        return w

    def customers_of(self, w: WindowRecord, policy: Policy | None = None) -> tuple[str, ...]:
        return affected(w.scope, (policy or self.policy()).customers)

    def overlaps_of(self, w: WindowRecord, others=None) -> list[dict]:
        others = others if others is not None else self.all().values()
        mine = Span(w.id, w.start, w.end, frozenset(self.customers_of(w)))
        return overlaps(mine, [Span(o.id, o.start, o.end, frozenset(self.customers_of(o)))
                               for o in others if o.state not in FINAL])

    def check(self, w: WindowRecord, now: dt.datetime):
        rules = self.policy().maintenance.notice
        return check_notice(w.kind, w.start, now, urgent=w.urgent, justification=w.justification,
                            days=rules.planned_days, tz=self.tz)

    # -- changing ------------------------------------------------------------------------------

    def create(self, w: WindowRecord, actor: str) -> Change:
        now = self.clock.now()
        if w.end <= now:
            raise Conflict(f"window {w.id} ended already ({w.end.isoformat()})")
        verdict = self.check(w, now)
        if not verdict.ok:
            raise Conflict(f"window {w.id}: {verdict.reason}", field="start")
        if not self.customers_of(w):
            raise Invalid(f"window {w.id}: the scope ({describe(w.scope)}) matches no customer",
                               field="scope")
        w = w.replace(state="scheduled", actor=actor, deadline=verdict.as_dict())
        with self.store.transaction() as db:
            if windows.load(db, w.id) is not None:
                raise Conflict(f"maintenance window {w.id!r} exists already", field="id")
            windows.save(db, w, now)
            self.store.audit(actor, "maintenance.add", f"window:{w.id}", None, w.as_dict(), db=db)
            change = self._apply(db, w, "notify", now, actor)
        return change

    def import_finished(self, w: WindowRecord, actor: str) -> WindowRecord:
        """A policy window that is over before we first saw it: recorded as history, no notices."""
        now = self.clock.now()
        w = w.replace(state="completed", actor=actor)
        with self.store.transaction() as db:
            windows.save(db, w, now)
            self.store.audit(actor, "maintenance.import", f"window:{w.id}", None, w.as_dict(), db=db)
        return w

    def update(self, window_id: str, changes: dict, actor: str) -> Change:
        """Reschedule or edit; a new period outside the announced one needs its own notice deadline."""
        now = self.clock.now()
        old = self.get(window_id)
        if old.state in FINAL:
            raise Conflict(f"window {window_id} is {old.state}; nothing to update")
        new = old.replace(**changes)
        if new.end <= new.start:
            raise Invalid("end must be after start", field="end")
        if old.state == "active" and new.start != old.start:
            raise Conflict(f"window {window_id} is active: its start cannot move (change the end, or "
                               "cancel it to end it now)", field="start")
        if new.end <= now:
            raise Conflict(f"the new end {new.end.isoformat()} is in the past; cancel the window to end "
                               "it now", field="end")
        inside = old.start <= new.start and new.end <= old.end
        verdict = None
        if not inside and old.state != "active":
            verdict = self.check(new, now)
            if not verdict.ok:
                raise Conflict(f"window {window_id}: the new period is not inside the announced one and "
                                   f"{verdict.reason}", field="start")
        if new.start != old.start:
            new = new.replace(reminded=False)
        if verdict is not None:
            new = new.replace(deadline=verdict.as_dict())
        if new == old:
            return Change(old)
        with self.store.transaction() as db:
            self.store.audit(actor, "maintenance.update", f"window:{window_id}", old.as_dict(), new.as_dict(),
                             db=db)
            return self._apply(db, new, "update", now, actor)

    def cancel(self, window_id: str, reason: str, actor: str) -> Change:
        now = self.clock.now()
        w = self.get(window_id)
        try:
            next_state(w.state, "cancel")
        except TransitionRefused as exc:
            raise Conflict(f"window {window_id}: {exc}") from None
        if w.state == "active":
            w = w.replace(end=max(now, w.start))
        with self.store.transaction() as db:
            self.store.audit(actor, "maintenance.cancel", f"window:{window_id}", {"state": w.state},
                             {"reason": reason}, db=db)
            return self._apply(db, w, "cancel", now, actor)

    def tick(self) -> list[Change]:
        """Apply every timed transition due now (start, end, reminder)."""
        now = self.clock.now()
        reminder = self.policy().maintenance.notice.reminder_before
        out = []
        for w in self.all().values():
            while (ev := due_event(w.timing(), now, reminder)) is not None:
                with self.store.transaction() as db:
                    if ev == "start" and w.state == "scheduled":
                        w = self._apply(db, w, "notify", now, "daemon").window
                    change = self._apply(db, w, ev, now, "daemon")
                out.append(change)
                w = change.window
        return out

    def next_wake(self) -> dt.datetime | None:
        now = self.clock.now()
        reminder = self.policy().maintenance.notice.reminder_before
        times = [t for w in self.all().values() if (t := next_wake(w.timing(), now, reminder)) is not None]
        return min(times) if times else None

    # -- the one place a window changes state ------------------------------------------------------

    def _apply(self, db, w: WindowRecord, event: str, now: dt.datetime, actor: str) -> Change:
        state = next_state(w.state, event)
        kind, bump = NOTICE_FOR[event]
        seq = w.sequence + 1 if bump else w.sequence
        reminder = self.policy().maintenance.notice.reminder_before
        # a notice sent inside the reminder period already is the reminder
        late = event in ("notify", "update") and now >= w.start - dt.timedelta(seconds=reminder)
        new = w.replace(state=state, sequence=seq, reminded=w.reminded or event == "remind" or late)
        customers = self.customers_of(new)
        if event == "start":
            windows.impact_open(db, w.id, customers, min(w.start, now), w.impact)
        if state == "completed":
            windows.impact_close(db, w.id, new.end)
        new = windows.save(db, new, now)
        if event != "update":
            self.store.audit(actor, f"maintenance.{event}", f"window:{w.id}", {"state": w.state},
                             {"state": state, "sequence": seq}, db=db)
        change = Change(new)
        send = not (event == "cancel" and w.state == "scheduled")
        if send:
            change.notices = self._queue(db, new, kind, customers, now)
        change.events.append(("window", {"id": w.id, "kind": w.kind, "event": event, "state": state,
                                         "from": w.state, "sequence": seq, "impact": w.impact,
                                         "start": new.start.isoformat(), "end": new.end.isoformat(),
                                         "customers": list(customers) if state in ("active", "completed")
                                         else len(customers)}))
        log.info("window %s: %s -> %s (%s, %d notice(s) queued)", w.id, w.state, state, event, change.notices)
        return change

    def _queue(self, db, w: WindowRecord, kind: str, customers, now: dt.datetime) -> int:
        policy = self.policy()
        smtp = policy.maintenance.smtp
        sender = smtp.sender if smtp else "noc@localhost"
        copy_to = tuple(smtp.copy_to) if smtp else ()
        by_id = policy.customers_by_id
        n = 0
        for cid in customers:
            c = by_id[cid]
            contact = contacts.current(db, cid)
            langs = _languages(contact.language if contact else c.contact.language,
                               policy.maintenance.notice.languages)
            data = NoticeData(
                window_id=w.id, window_kind=w.kind, notice_kind=kind, sequence=w.sequence, start=w.start,
                end=w.end, reason_ja=w.reason_ja, reason_en=w.reason_en, impact=w.impact,
                scope_text=describe(w.scope), customer_id=cid, customer_name=c.name, objects=objects(w.scope, c),
                provider=policy.settings.provider, sender=sender,
                recipients=((contact.email,) if contact and contact.email else ()) + copy_to,
                message_id=outbox.new_message_id(w.id, cid, kind, w.sequence, sender), created=now,
                tz=policy.settings.timezone, languages=langs, urgent=w.urgent)
            n += outbox.enqueue(db, data, contact, now, self.notices)
        return n


def _languages(contact_language: str, allowed) -> tuple[str, ...]:
    wanted = ("ja", "en") if contact_language == "ja+en" else (contact_language,)
    langs = tuple(x for x in wanted if x in allowed)
    return langs or tuple(allowed)
