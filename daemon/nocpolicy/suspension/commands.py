"""The suspension commands (admin API, CLI and MQTT all dispatch here): suspend, resume,
list, terminate (Art. 27(2)) and abolition.announce (Art. 26)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

from ..control.commands import Command
from ..errors import Conflict, Invalid, NotFound
from ..maintenance import contacts
from ..maintenance.deadline import check_months_notice
from ..policy.fields import Invalid as BadValue  # a converter's refusal: Args names the field
from ..policy.fields import (
    as_bool,
    as_datetime,
    as_id,
    as_rate,
    as_str,
    as_text,
    list_of,
    obj,
    one_of,
)
from ..subscribers.model import CAUSES, MODES
from ..subscribers.suspensions import MAX_REASON, adopted
from . import delivery, letters
from .rules import Request


def build(comp) -> list[Command]:
    return [
        Command("suspension.suspend", lambda a, i: suspend(comp, a, i),
                "suspend or restrict one customer (Art. 25) with prior notice"),
        Command("suspension.resume", lambda a, i: resume(comp, a, i), "end or cancel a customer's suspension"),
        Command("suspension.list", lambda a, i: listing(comp, a, i), "suspensions (open, or one customer's)",
                mutating=False),
        Command("suspension.terminate", lambda a, i: terminate(comp, a, i),
                "record the termination of a terminable suspension's contract and send the Art. 27(2) notice"),
        Command("abolition.announce", lambda a, i: abolition(comp, a, i),
                "announce the abolition of a service to every affected customer (Art. 26: 3 months)"),
    ]


def _customer(comp, cid: str):
    sub = comp.ctx.subscribers.view.get(cid)
    if sub is None:
        raise NotFound(f"unknown customer {cid!r}", field="customer")
    return sub



def _reason(node, _p=None) -> str:
    return _bounded(as_text(node))


def _note(node, _p=None) -> str:
    """An optional note (may be empty), bounded like a reason."""
    return _bounded(as_str(node).strip())


def _bounded(s: str) -> str:
    if len(s) > MAX_REASON:
        raise BadValue(f"at most {MAX_REASON} characters (this one has {len(s)})")
    return s


def _request(args, tz: str) -> Request:
    r = Request(customer=args.req("customer", as_id), cause=args.req("cause", one_of(*CAUSES)),
                mode=args.req("mode", one_of(*MODES)), reason=args.req("reason", _reason),
                start=args.get("from", lambda n, p=None: as_datetime(n, p, tz), None),
                end=args.get("until", lambda n, p=None: as_datetime(n, p, tz), None),
                rate=args.get("rate", as_rate, None), urgent=args.get("urgent", as_bool, False) or False,
                justification=args.get("justification", _note, "") or "")
    args.check()
    return r


async def suspend(comp, args, inv) -> dict:
    r = _request(args, comp.ctx.policy().settings.timezone)
    sub = _customer(comp, r.customer)
    row = await asyncio.to_thread(comp.service.suspend, r, sub, inv.actor, notices=comp.post is not None)
    nft = await comp.pushed(row, "add")
    return {"suspension": _show(row), "nftables": nft}


async def resume(comp, args, inv) -> dict:
    cid = args.req("customer", as_id)
    reason = args.get("reason", _note, "") or ""
    args.check()
    _customer(comp, cid)
    row = comp.service.the_open(cid)
    event = "end" if row["state"] == "active" else "cancel"
    new = await asyncio.to_thread(comp.service.transition, row, event, inv.actor, reason)
    nft = await comp.pushed(new, event)
    return {"suspension": _show(new), "event": event, "nftables": nft}


async def listing(comp, args, inv) -> dict:
    cid = args.get("customer", as_id, None)
    terminable = args.get("terminable", as_bool, False)
    args.check()
    with comp.ctx.store.transaction() as db:
        rows = comp.service.rows.rows(db, customer=cid, states=None if cid else ("scheduled", "active"))
        impacts = comp.service.rows.impacts(db, cid) if cid else []
        sent = delivery.listing(db, cid) if cid else []
    if terminable:
        rows = [r for r in rows if r["state"] == "active" and r["terminable"]]
    fleet = [s for s in await asyncio.to_thread(adopted, comp.ctx.store) if cid is None or s["customer"] == cid]
    return {"suspensions": [_show(r) for r in rows], "impacts": impacts, "letters": sent, "fleet": fleet}


async def terminate(comp, args, inv) -> dict:
    cid = args.req("customer", as_id)
    reason = args.req("reason", _reason)
    args.check()
    _customer(comp, cid)
    row = comp.service.the_open(cid, ("active",))
    if not row["terminable"]:
        raise Conflict(f"suspension {row['id']} is not terminable before {row['terminable_at']} (Art. 27(1): "
                       "two months after the restriction, at once for nonpayment)", field="customer")
    new = await asyncio.to_thread(comp.service.transition, row, "terminate", inv.actor, reason)
    await comp.pushed(new, "terminate")
    return {"suspension": _show(new)}


def _show(row: dict) -> dict:
    return {k: row[k] for k in ("id", "customer", "state", "mode", "cause", "reason", "start", "end", "rate",
                                "urgent", "justification", "terminable_at", "created", "actor", "ended_at",
                                "end_reason")} | {"terminable": bool(row["terminable"])}


# -- Art. 26 ---------------------------------------------------------------------------------------

def _scope(o) -> dict:
    return {"customers": o.get("customers", list_of(as_id, unique=True), ()) or (),
            "plans": o.get("plans", list_of(as_id, unique=True), ()) or (),
            "tags": o.get("tags", list_of(as_id, unique=True), ()) or ()}


def _date(node, _p=None) -> dt.date:
    s = as_str(node).strip()
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise BadValue(f"{s!r} is not a date (YYYY-MM-DD)") from None


def affected(policy, scope: dict) -> list:
    """The policy customers a scope names (by id, plan or tag)."""
    return [c for c in policy.customers if c.id in scope["customers"] or c.plan in scope["plans"]
            or set(c.tags) & set(scope["tags"])]


async def abolition(comp, args, inv) -> dict:
    scope = args.req("scope", obj(_scope))
    effective = args.req("date", _date)
    reason = args.req("reason", _reason)
    service = args.get("service", _reason, None)
    args.check()
    policy = comp.ctx.policy()
    s = policy.suspension
    check = check_months_notice(effective, comp.ctx.clock.now(), s.abolition_months, policy.settings.timezone)
    if not check.ok:
        raise Conflict(check.reason, field="date")
    customers = affected(policy, scope)
    if not customers:
        raise Invalid("the scope names no customer", field="scope")
    out = await asyncio.to_thread(_announce, comp, policy, scope, effective, reason, service, customers, check,
                                  inv.actor)
    comp.outbox.poke()
    return out


def _announce(comp, policy, scope, effective, reason, service, customers, check, actor) -> dict:
    now = comp.ctx.clock.now()
    store = comp.ctx.store
    what = service or ", ".join(sorted(scope["plans"])) or "the service / 本サービス"
    ja, en = letters.abolition_lines(what, effective, reason, policy.suspension)
    with store.transaction() as db:
        aid = db.execute("INSERT INTO sp_abolition (scope, effective, reason, customers, deadline, created, actor) "
                         "VALUES (?,?,?,?,?,?,?)", (json.dumps({k: list(v) for k, v in scope.items()}),
                                                    effective.isoformat(), reason, len(customers),
                                                    json.dumps(check.as_dict()), now.isoformat(), actor)).lastrowid
        queued = 0
        for c in customers:
            contact = contacts.current(db, c.id)
            letter = letters.Letter(f"abolition-{aid}", c.id, c.name, "abolition",
                                    letters.languages(contact.language if contact else None), ja, en,
                                    policy.suspension.provider,
                                    {"abolition": aid, "service": what, "date": effective.isoformat(),
                                     "reason": reason})
            queued += delivery.enqueue(db, letter, contact, comp._sender(), now, comp.outbox) is not None
        store.audit(actor, "abolition.announce", f"abolition:{aid}", None,
                    {"scope": {k: list(v) for k, v in scope.items()}, "date": effective.isoformat(),
                     "reason": reason, "customers": [c.id for c in customers]}, db=db)
    return {"id": aid, "customers": [c.id for c in customers], "notices_queued": queued,
            "deadline": check.as_dict()}
