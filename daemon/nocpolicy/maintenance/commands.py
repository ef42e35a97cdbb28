"""Control commands: maintenance.add/update/cancel/list/show, contact.set/show, notices."""

from __future__ import annotations

import datetime as dt
import secrets

from ..control.commands import Args, Command, Invocation
from ..errors import CommandError
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
from . import contacts, mqttnotices, outbox, webhooks, windows
from .lifecycle import STATES
from .windows import WindowRecord


def _impact(node, _p=None) -> str:
    return one_of(*(i.lower() for i in IMPACTS))(node).upper()


def build(comp) -> list[Command]:
    svc = comp.service

    def when(node, p=None):
        return as_datetime(node, p, svc.tz).astimezone(dt.UTC)

    async def add(args: Args, inv: Invocation) -> dict:
        wid = args.get("id", as_id, None)
        kind = args.req("kind", one_of(*KINDS))
        start = args.req("start", when)
        end = args.req("end", when)
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
        now = svc.clock.now()
        wid = wid or f"mw-{start.astimezone(dt.UTC).strftime('%Y%m%d')}-{secrets.token_hex(3)}"
        w = WindowRecord(id=wid, source="runtime", kind=kind, start=start, end=end, reason_ja=reason[0],
                         reason_en=reason[1], impact=impact, scope=scope, urgent=urgent, justification=why,
                         state="scheduled")
        change = svc.create(w, inv.actor)
        comp.published(change)
        return {"window": change.window.as_dict(svc.tz), "notices_queued": change.notices,
                "customers": list(svc.customers_of(change.window)), "overlaps": svc.overlaps_of(change.window),
                "smtp": comp.smtp_configured, "checked_at": now.isoformat()}

    async def update(args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        changes = {}
        for key, conv in (("start", when), ("end", when), ("impact", _impact), ("urgent", as_bool),
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
        change = svc.update(wid, changes, inv.actor)
        comp.published(change)
        return {"window": change.window.as_dict(svc.tz), "notices_queued": change.notices,
                "overlaps": svc.overlaps_of(change.window)}

    async def cancel(args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        reason = args.get("reason", as_str, "") or ""
        args.check()
        change = svc.cancel(wid, reason, inv.actor)
        comp.published(change)
        return {"window": change.window.as_dict(svc.tz), "notices_queued": change.notices}

    async def list_(args: Args, inv: Invocation) -> dict:
        state = args.get("state", one_of(*STATES), None)
        args.check()
        out = []
        for w in svc.all().values():
            if state and w.state != state:
                continue
            d = w.as_dict(svc.tz)
            d["customers"] = len(svc.customers_of(w))
            out.append(d)
        return {"windows": out, "tz": svc.tz}

    async def show(args: Args, inv: Invocation) -> dict:
        wid = args.req("id", as_id)
        args.check()
        w = svc.get(wid)
        with comp.ctx.store.transaction() as db:
            notices = outbox.listing(db, window=wid, limit=1000)
            impacts = windows.impacts(db, wid)
        return {"window": w.as_dict(svc.tz), "customers": list(svc.customers_of(w)),
                "deadline_now": svc.check(w, svc.clock.now()).as_dict() if w.state not in ("completed", "cancelled")
                else None,
                "overlaps": svc.overlaps_of(w) if w.state not in ("completed", "cancelled") else [],
                "notices": notices, "impacts": impacts,
                "audit": comp.ctx.store.audit_log(subject=f"window:{wid}", limit=100)}

    async def contact_set(args: Args, inv: Invocation) -> dict:
        cid = args.req("customer", as_id)
        email = args.get("email", as_email, None)
        webhook = args.get("webhook", as_url("http", "https"), None)
        topic = args.get("mqtt_topic", as_mqtt_topic, None)
        language = args.get("language", one_of("ja", "en", "ja+en"), None)
        reason = args.get("reason", as_str, "") or ""
        args.check()
        policy = comp.ctx.policy()
        if cid not in policy.customers_by_id:
            raise CommandError(f"unknown customer {cid!r}", status=404, field="customer")
        if not (email or webhook or topic):
            raise CommandError("a fault contact needs an email, webhook or mqtt_topic", field="email")
        now = svc.clock.now()
        with comp.ctx.store.transaction() as db:
            before = contacts.current(db, cid)
            c = Contact(email, webhook, topic, language or (before.language if before else "ja+en"))
            new = contacts.add_version(db, cid, c, source="runtime", actor=inv.actor, reason=reason, now=now)
            moved = outbox.retarget(db, cid, new, now)
            webhooks.retarget(db, cid, new, now)
            mqtt_moved = mqttnotices.retarget(db, cid, new, now)
            comp.ctx.store.audit(inv.actor, "contact.set", f"customer:{cid}",
                                 before.as_dict() if before else None, new.as_dict(), db=db)
        comp.poke()
        return {"contact": new.as_dict(), "previous_version": before.version if before else None,
                "notices_retargeted": moved, "mqtt_retargeted": mqtt_moved}

    async def contact_show(args: Args, inv: Invocation) -> dict:
        cid = args.req("customer", as_id)
        args.check()
        with comp.ctx.store.transaction() as db:
            hist = contacts.history(db, cid)
        if not hist:
            raise CommandError(f"no fault contact on record for {cid!r}", status=404, field="customer")
        return {"customer": cid, "current": hist[-1].as_dict(), "history": [h.as_dict() for h in hist]}

    async def notices(args: Args, inv: Invocation) -> dict:
        state = args.get("state", one_of("pending", "sending", "sent", "failed", "superseded", "skipped"), None)
        wid = args.get("window", as_id, None)
        limit = args.get("limit", int_range(1, 10_000), 200)
        args.check()
        with comp.ctx.store.transaction() as db:
            rows = outbox.listing(db, state=state, window=wid, limit=max(1, min(limit, 5000)))
            counts = outbox.counts(db)
        summary: dict[str, int] = {}
        for (_, st), n in counts.items():
            summary[st] = summary.get(st, 0) + n
        return {"notices": rows, "summary": summary, "smtp": comp.smtp_configured}

    return [
        Command("maintenance.add", add, "create a maintenance or fault window (notice deadline checked)"),
        Command("maintenance.update", update, "reschedule or edit a window (sends update notices)"),
        Command("maintenance.cancel", cancel, "cancel a window (ends it now if active)"),
        Command("maintenance.list", list_, "maintenance and fault windows", mutating=False),
        Command("maintenance.show", show, "one window: deadline, customers, notices, impact", mutating=False),
        Command("contact.set", contact_set, "record a customer's new fault contact (Art. 24(4))"),
        Command("contact.show", contact_show, "a customer's fault contact and its history", mutating=False),
        Command("notices", notices, "the notice outbox (state, window, limit)", mutating=False),
    ]


