"""Control commands: maintenance.add/update/cancel/list/show, contact.set/show, notices."""

from __future__ import annotations

import datetime as dt
import secrets

from ..control.commands import Args, Command, Invocation
from ..errors import CommandError, NotFound
from ..policy.customers import Contact, as_mqtt_topic
from ..policy.fields import (
    as_bool,
    as_datetime,
    as_email,
    as_id,
    as_str,
    as_url,
    int_range,
    obj,
    one_of,
)
from ..policy.maintenance import IMPACTS, KINDS, Scope, read_reason, read_scope
from . import contacts, outbox, windows
from .lifecycle import STATES
from .windows import WindowRecord


def _impact(node, _p=None) -> str:
    return one_of(*(i.lower() for i in IMPACTS))(node).upper()


class _Handlers:
    """The maintenance commands; each method validates its arguments whole, then calls the service."""

    def __init__(self, comp):
        self.comp, self.svc = comp, comp.service

    def when(self, node, p=None):
        return as_datetime(node, p, self.svc.tz).astimezone(dt.UTC)

    async def add(self, args: Args, inv: Invocation) -> dict:
        wid = args.get("id", as_id, None)
        kind = args.req("kind", one_of(*KINDS))
        start = args.req("start", self.when)
        end = args.req("end", self.when)
        reason = args.req("reason", obj(read_reason))
        impact = args.get("impact", _impact, "OUTAGE")
        scope = args.get("scope", obj(read_scope), Scope()) or Scope()
        urgent = args.get("urgent", as_bool, False)
        why = args.get("justification", as_str, "") or ""
        args.check()
        if scope == Scope():
            raise CommandError("scope: a window needs customers, tags, nodes or prefixes", field="scope")
        if end <= start:
            raise CommandError("end: must be after start", field="end")
        now = self.svc.clock.now()
        wid = wid or f"mw-{start.astimezone(dt.UTC).strftime('%Y%m%d')}-{secrets.token_hex(3)}"
        w = WindowRecord(id=wid, source="runtime", kind=kind, start=start, end=end, reason_ja=reason[0],
                         reason_en=reason[1], impact=impact, scope=scope, urgent=urgent, justification=why,
                         state="scheduled")
        change = self.svc.create(w, inv.actor)
        self.comp.published(change)
        return {"window": change.window.as_dict(self.svc.tz), "notices_queued": change.notices,
                "customers": list(self.svc.customers_of(change.window)), "overlaps": self.svc.overlaps_of(change.window),
                "smtp": self.comp.smtp_configured, "checked_at": now.isoformat()}

    async def update(self, args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        changes = {}
        for key, conv in (("start", self.when), ("end", self.when), ("impact", _impact), ("urgent", as_bool),
                          ("justification", as_str)):
            v = args.get(key, conv, None)
            if v is not None:
                changes[key] = v
        reason = args.get("reason", obj(read_reason), None)
        args.check()
        if reason:
            changes["reason_ja"], changes["reason_en"] = reason
        if not changes:
            raise CommandError("nothing to change (start, end, reason, impact, urgent, justification)")
        change = self.svc.update(wid, changes, inv.actor)
        self.comp.published(change)
        return {"window": change.window.as_dict(self.svc.tz), "notices_queued": change.notices,
                "overlaps": self.svc.overlaps_of(change.window)}

    async def cancel(self, args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        reason = args.get("reason", as_str, "") or ""
        args.check()
        change = self.svc.cancel(wid, reason, inv.actor)
        self.comp.published(change)
        return {"window": change.window.as_dict(self.svc.tz), "notices_queued": change.notices}

    async def list_(self, args: Args, inv: Invocation) -> dict:
        state = args.get("state", one_of(*STATES), None)
        args.check()
        out = []
        for w in self.svc.all().values():
            if state and w.state != state:
                continue
            d = w.as_dict(self.svc.tz)
            d["customers"] = len(self.svc.customers_of(w))
            out.append(d)
        return {"windows": out, "tz": self.svc.tz}

    async def show(self, args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        args.check()
        w = self.svc.get(wid)
        with self.comp.ctx.store.transaction() as db:
            notices = outbox.listing(db, window=wid, limit=1000)
            impacts = windows.impacts(db, wid)
        return {"window": w.as_dict(self.svc.tz), "customers": list(self.svc.customers_of(w)),
                "deadline_now": self.svc.check(w, self.svc.clock.now()).as_dict() if w.state not in ("completed", "cancelled")
                else None,
                "overlaps": self.svc.overlaps_of(w) if w.state not in ("completed", "cancelled") else [],
                "notices": notices, "impacts": impacts,
                "audit": self.comp.ctx.store.audit_log(subject=f"window:{wid}", limit=100)}

    async def contact_set(self, args: Args, inv: Invocation) -> dict:
        cid = args.req("customer", as_id)
        email = args.get("email", as_email, None)
        webhook = args.get("webhook", as_url("http", "https"), None)
        topic = args.get("mqtt_topic", as_mqtt_topic, None)
        language = args.get("language", one_of("ja", "en", "ja+en"), None)
        reason = args.get("reason", as_str, "") or ""
        args.check()
        policy = self.comp.ctx.policy()
        if cid not in policy.customers_by_id:
            raise NotFound(f"unknown customer {cid!r}", field="customer")
        if not (email or webhook or topic):
            raise CommandError("a fault contact needs an email, webhook or mqtt_topic", field="email")
        now = self.svc.clock.now()
        with self.comp.ctx.store.transaction() as db:
            before = contacts.current(db, cid)
            c = Contact(email, webhook, topic, language or (before.language if before else "ja+en"))
            new = contacts.add_version(db, cid, c, source="runtime", actor=inv.actor, reason=reason, now=now)
            moved = self.comp.notices.retarget(db, outbox.OPEN_NOTICES, (cid,), new, now)
            self.comp.ctx.store.audit(inv.actor, "contact.set", f"customer:{cid}",
                                 before.as_dict() if before else None, new.as_dict(), db=db)
        self.comp.poke()
        self.comp.contacts_changed()
        return {"contact": new.as_dict(), "previous_version": before.version if before else None,
                "notices_retargeted": moved["email"], "mqtt_retargeted": moved["mqtt"]}

    async def contact_show(self, args: Args, inv: Invocation) -> dict:
        cid = args.req("customer", as_id)
        args.check()
        with self.comp.ctx.store.transaction() as db:
            hist = contacts.history(db, cid)
        if not hist:
            raise NotFound(f"no fault contact on record for {cid!r}", field="customer")
        return {"customer": cid, "current": hist[-1].as_dict(), "history": [h.as_dict() for h in hist]}

    async def notices(self, args: Args, inv: Invocation) -> dict:
        state = args.get("state", one_of("pending", "sending", "sent", "failed", "superseded", "skipped"), None)
        wid = args.get("window", as_id, None)
        limit = args.get("limit", int_range(1, 10_000), 200)
        args.check()
        with self.comp.ctx.store.transaction() as db:
            rows = outbox.listing(db, state=state, window=wid, limit=max(1, min(limit, 5000)))
            counts = outbox.counts(db)
        summary: dict[str, int] = {}
        for (_, st), n in counts.items():
            summary[st] = summary.get(st, 0) + n
        return {"notices": rows, "summary": summary, "smtp": self.comp.smtp_configured}

def build(comp) -> list[Command]:
    h = _Handlers(comp)
    return [
        Command("maintenance.add", h.add, "create a maintenance or fault window (notice deadline checked)"),
        Command("maintenance.update", h.update, "reschedule or edit a window (sends update notices)"),
        Command("maintenance.cancel", h.cancel, "cancel a window (ends it now if active)"),
        Command("maintenance.list", h.list_, "maintenance and fault windows", mutating=False),
        Command("maintenance.show", h.show, "one window: deadline, customers, notices, impact", mutating=False),
        Command("contact.set", h.contact_set, "record a customer's new fault contact (Art. 24(4))"),
        Command("contact.show", h.contact_show, "a customer's fault contact and its history", mutating=False),
        Command("notices", h.notices, "the notice outbox (state, window, limit)", mutating=False),
    ]


