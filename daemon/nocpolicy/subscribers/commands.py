"""The subscribers area's commands: consent by purpose, and the opt-out as its alias.

``consent.set`` (customer, purpose, on, channel, wording) and ``consent.show``; ``optout.set``
and ``optout.list`` stay as they were, now as consent ``cc-blocking`` (optout on = blocking
off). Each change is persisted with its audit record, applied to the view and sent to every
replica before it is acknowledged: the very next query sees it.
"""

from __future__ import annotations

import asyncio
import logging

from ..control.commands import Command
from ..errors import Invalid, NotFound
from ..policy.fields import as_bool, as_id, as_str
from .consent import CHANNELS, WORDING_MAX
from .model import CLAUSES, PURPOSES

log = logging.getLogger(__name__)


def channel_of(source: str, asked: str | None) -> str:
    """The channel a change came through: MQTT is MQTT whatever it says; the admin API and
    the CLI are the operator's, who may say the customer called (phone)."""
    if source == "mqtt":
        return "mqtt"
    if source == "portal":
        return "portal"
    if asked is None:
        return "operator"
    if asked not in ("operator", "phone"):
        raise Invalid(f"channel must be operator or phone here, not {asked!r} (known: {', '.join(CHANNELS)})",
                      field="channel")
    return asked


class ConsentCommands:
    def __init__(self, owner):
        self.owner = owner          # the Subscribers component

    def commands(self) -> list[Command]:
        return [
            Command("consent.set", self.consent_set, "consent of a customer to a purpose on/off "
                    "(cc-blocking, analysis, isac-source, isac-probe)"),
            Command("consent.show", self.consent_show, "a customer's consents, with who/when/channel",
                    mutating=False),
            Command("optout.set", self.optout_set, "security-list opt-out on/off (alias of consent "
                    "cc-blocking off/on)"),
            Command("optout.list", self.optout_list, "opt-out state of every customer", mutating=False),
        ]

    async def consent_set(self, args, inv) -> dict:
        cid = args.req("customer", as_id)
        purpose = args.req("purpose", as_str)
        on = args.req("on", as_bool)
        wording = args.get("wording", as_str, "") or ""
        asked = args.get("channel", as_str, None)
        args.check()
        if purpose not in PURPOSES:
            raise Invalid(f"unknown purpose {purpose!r} (known: {', '.join(PURPOSES)})", field="purpose")
        if len(wording) > WORDING_MAX:
            raise Invalid(f"at most {WORDING_MAX} characters", field="wording")
        return await self.owner.set_consent(cid, purpose, on, actor=inv.actor,
                                            channel=channel_of(inv.source, asked), wording=wording)

    async def consent_show(self, args, inv) -> dict:
        cid = args.req("customer", as_id)
        args.check()
        return await self.owner.consent_of(cid)

    async def optout_set(self, args, inv) -> dict:
        cid = args.req("customer", as_id)
        on = args.req("on", as_bool)
        reason = args.get("reason", as_str, "") or ""
        args.check()
        out = await self.owner.set_consent(cid, "cc-blocking", not on, actor=inv.actor,
                                           channel=channel_of(inv.source, None), wording=reason,
                                           action="dns.optout.set")
        return {"customer": cid, "optout": on, "reason": reason, "actor": inv.actor, "ts": out["ts"],
                "before": not out["before"], "changed": out["changed"]}

    async def optout_list(self, args, inv) -> dict:
        args.check()
        latest = await asyncio.to_thread(self.owner.consents.latest)
        view = self.owner.view
        out = []
        for cid, c in view.customers.items():
            sub = view.by_id[cid]
            r = latest.get((cid, "cc-blocking")) or {}
            out.append({"customer": cid, "name": c.name, "optout": sub.opted_out, "source": sub.optout_source,
                        "policy_value": c.security_optout, "reason": r.get("wording"),
                        "actor": r.get("actor"), "since": r.get("ts")})
        return {"customers": out, "opted_out": sum(1 for x in out if x["optout"])}


def describe_consent(sub, latest: dict, customer) -> dict:
    """The consent answer for one customer: each purpose, its clause, value and record."""
    purposes = []
    for purpose, default in PURPOSES.items():
        r = latest.get((sub.customer, purpose))
        policy_default = default and not (purpose == "cc-blocking" and customer is not None
                                          and customer.security_optout)
        purposes.append({"purpose": purpose, "clause": f"Art. {CLAUSES[purpose]}", "on": sub.consents(purpose),
                         "default": policy_default, "source": "runtime" if r else "default",
                         "channel": r and r["channel"], "actor": r and r["actor"],
                         "wording": r and r["wording"], "since": r and r["ts"]})
    return {"customer": sub.customer, "purposes": purposes}


def not_found(cid) -> NotFound:
    return NotFound(f"unknown customer {cid!r}", field="customer")
