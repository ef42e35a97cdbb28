"""The immutable view of every subscriber, built by pure functions.

``subscriber_of`` is the ONE place that decides what applies to a customer (policy
values overridden by runtime decisions). ``build_view`` applies it to every customer
and builds the address lookup; ``update_view`` rebuilds only the customers a runtime
decision touched and shares everything else (an opt-out among 100k customers copies
one dict, it does not rebuild the prefix index).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial

from ..gcpause import gc_paused
from ..policy.invtable import CustomerIndex, prefix_of
from .lazy import SubscriberMap
from .model import CONSENT, PURPOSES, Decisions, Subscriber, suspended_of
from .prefixes import PrefixIndex, customers_delta

# What applies to a client outside every customer prefix (dns.unknown_clients).
UNKNOWN_MODES = {"protect": Subscriber(None, security=True),
                 "mandatory-only": Subscriber(None, security=False),
                 "refuse": Subscriber(None, security=False, refuse=True)}


def effective_consent(cid: str, policy_optout: bool, decisions: Decisions) -> tuple[frozenset[str], str]:
    """The purposes ``cid`` consents to and where cc-blocking comes from ("policy" |
    "runtime"): the defaults (model.PURPOSES), the policy's ``security_optout`` for
    cc-blocking, then the runtime decisions (a ``consent:cc-blocking`` decision over an old ``optout``)."""
    on = {p for p, default in PURPOSES.items() if default}
    if policy_optout:
        on.discard("cc-blocking")
    source = "policy"
    old = decisions.get("optout", cid)
    if old is not None:
        on.discard("cc-blocking") if old else on.add("cc-blocking")
        source = "runtime"
    for purpose in PURPOSES:
        value = decisions.get(CONSENT + purpose, cid)
        if value is None:
            continue
        on.add(purpose) if value else on.discard(purpose)
        if purpose == "cc-blocking":
            source = "runtime"
    return frozenset(on), source


def implicit_subscriber(cid: str, decisions: Decisions) -> Subscriber:
    """A customer known only from a session (not in the policy): the policy's defaults (no
    opt-out, no optional list) under the runtime decisions keyed by its id."""
    consent, source = effective_consent(cid, False, decisions)
    return Subscriber(cid, security="cc-blocking" in consent, optout_source=source, consent=consent,
                      **_runtime(decisions, cid))


def subscriber_of(c, decisions: Decisions) -> Subscriber:
    """The effective state of policy customer ``c`` under the runtime ``decisions``."""
    consent, source = effective_consent(c.id, c.security_optout, decisions)
    return Subscriber(c.id, security="cc-blocking" in consent, optional=frozenset(c.optional_lists),
                      plan=c.plan, tags=frozenset(c.tags), nodes=frozenset(c.nodes),
                      prefixes=tuple(c.prefixes), optout_source=source, consent=consent,
                      **_runtime(decisions, c.id))


def _runtime(decisions: Decisions, cid: str) -> dict:
    """The suspension and the rate cap in force: the lower of a ``ratecap`` decision and a throttle
    suspension's rate (a suspension is one decision; qos reads ``rate_cap`` alone)."""
    s = suspended_of(decisions.get("suspension", cid))
    caps = [x for x in (decisions.get("ratecap", cid), s.rate if s and s.mode == "throttle" else None) if x]
    return {"suspension": s, "rate_cap": min(caps) if caps else None}


@dataclass(frozen=True)
class SubscriberView:
    """Every subscriber and the address lookup, as of one policy and one set of decisions."""

    by_id: Mapping[str | None, Subscriber] = field(default_factory=lambda: {None: UNKNOWN_MODES["protect"]})
    prefixes: PrefixIndex = field(default_factory=PrefixIndex)
    customers: Mapping[str, object] = field(default_factory=dict)    # policy customers by id
    decisions: Decisions = field(default_factory=Decisions)

    @property
    def unknown(self) -> Subscriber:
        return self.by_id[None]

    def get(self, customer: str | None) -> Subscriber | None:
        return self.by_id.get(customer)

    def customer_of(self, host: str) -> str | None:
        """The customer id of client address ``host`` (longest prefix), or None."""
        return self.prefixes.lookup(host)

    def subscriber(self, host: str) -> Subscriber:
        cid = self.prefixes.lookup(host)
        sub = self.by_id.get(cid)
        if sub is None:          # unknown, or an implicit customer (a session's) without a decision
            return implicit_subscriber(cid, self.decisions) if cid is not None else self.by_id[None]
        return sub

    def live_addresses(self) -> list[tuple[tuple[int, int, int], str]]:
        """Every live session address with its customer: ``((family, network int, prefix length),
        customer id)``. A snapshot of the sessions as of now (call it on the event loop); empty
        without sessions."""
        live = getattr(self.prefixes, "live", None)
        return list(live.addresses()) if live is not None else []

    @cached_property
    def optouts(self) -> frozenset[str]:
        """Customers opted out of the security lists (the eagerly built ones: every customer
        opted out in the policy or by a decision is among them)."""
        return frozenset(cid for cid, s in dict.items(self.by_id) if s.opted_out)

    @cached_property
    def suspended(self) -> dict[str, Subscriber]:
        """Customers under an active suspension (Art. 25; a suspension is a decision)."""
        return {cid: s for cid, s in dict.items(self.by_id) if cid is not None and s.suspension is not None}


def build_view(customers: Iterable, unknown_mode: str, decisions: Decisions) -> SubscriberView:
    """The whole view for the policy's ``customers`` (pure; ~0.2 s per 100k prefixes: run it
    in a thread). A CSV inventory's customers get their subscriber when asked for (lazy.py)."""
    inventory = getattr(customers, "inventory", None)
    static = tuple(customers.static if inventory is not None else customers)
    with gc_paused():        # a million-row inventory: see gcpause
        by_id: dict[str | None, Subscriber] = {None: UNKNOWN_MODES[unknown_mode]}
        for c in static:
            by_id[c.id] = subscriber_of(c, decisions)
        prefixes = PrefixIndex.of_customers(customers)
        if inventory is None:
            return SubscriberView(by_id, prefixes, {c.id: c for c in static}, decisions)
        subs = SubscriberMap(by_id, inventory, partial(subscriber_of, decisions=decisions))
        for cid in decisions.customers():
            if cid in inventory.index and not dict.__contains__(subs, cid):
                subs[cid] = subscriber_of(inventory.get(cid), decisions)
        return SubscriberView(subs, prefixes, CustomerIndex({c.id: c for c in static}, inventory), decisions)


def reload_view(old: SubscriberView, customers: Iterable, unknown_mode: str,
                decisions: Decisions) -> SubscriberView:
    """The view for a new policy, reusing ``old`` where customers did not change: only the
    changed customers' subscribers are rebuilt and only the prefix tables they touch are
    copied (a CSV inventory reload that changes 1% of a million rows). Falls back to
    :func:`build_view` when much changed."""
    inventory = getattr(customers, "inventory", None)
    old_inv = getattr(old.by_id, "inventory", None)
    if inventory is not None or old_inv is not None:
        if inventory is None or old_inv is None or inventory.base() is not old_inv or decisions is not old.decisions:
            return build_view(customers, unknown_mode, decisions)
        return _reload_inventory(old, customers, unknown_mode, decisions)
    customers = tuple(customers)
    static = getattr(old.prefixes, "static", old.prefixes)
    if not old.customers or decisions is not old.decisions:
        return build_view(customers, unknown_mode, decisions)
    removed, added, changed = customers_delta(old.customers, customers)
    if len(changed) > max(1000, len(customers) // 10):
        return build_view(customers, unknown_mode, decisions)
    by_cust = {c.id: c for c in customers}
    by_id = dict(old.by_id)
    by_id[None] = UNKNOWN_MODES[unknown_mode]
    for cid in changed:
        c = by_cust.get(cid)
        if c is None:
            by_id.pop(cid, None)
        else:
            by_id[cid] = subscriber_of(c, decisions)
    return SubscriberView(by_id, static.updated(removed, added), by_cust, decisions)


def _reload_inventory(old: SubscriberView, customers, unknown_mode: str, decisions: Decisions) -> SubscriberView:
    """reload_view where both policies have a CSV inventory, the new one read against the old
    one: its ``changed`` ids (and the YAML customers' delta) are all that is rebuilt."""
    inv, old_inv = customers.inventory, old.by_id.inventory
    by_cust = {c.id: c for c in customers.static}
    removed, added, changed = customers_delta(old.customers.static, by_cust.values())
    if len(changed) + len(inv.changed) > max(1000, len(customers) // 10):
        return build_view(customers, unknown_mode, decisions)
    inv.tables = None                   # the old view's tables are updated instead (the new ones share theirs)
    for cid in inv.changed if inv.prefix_changed is None or inv.base() is not old_inv else inv.prefix_changed:
        j, i = old_inv.index.get(cid), inv.index.get(cid)
        was = old_inv.packed.of_row(j) if j is not None else []
        now = inv.packed.of_row(i) if i is not None else []
        # only the prefixes that differ: a renamed customer copies no table, a changed prefix the
        # tables of its old and new lengths
        removed += [(prefix_of(c, v), cid) for c, v in was if (c, v) not in now]
        added += [(prefix_of(c, v), cid) for c, v in now if (c, v) not in was]
    by_id = SubscriberMap(old.by_id, inv, old.by_id.build, old.by_id.cache)
    by_id[None] = UNKNOWN_MODES[unknown_mode]
    decided = decisions.customers()
    for cid in changed | inv.changed:
        c = by_cust.get(cid)
        dict.pop(by_id, cid, None)
        if c is not None:
            by_id[cid] = subscriber_of(c, decisions)
        elif cid in decided and cid in inv.index:
            by_id[cid] = subscriber_of(inv.get(cid), decisions)
    static = getattr(old.prefixes, "static", old.prefixes)
    return SubscriberView(by_id, static.updated(removed, added), CustomerIndex(by_cust, inv), decisions)


def update_view(view: SubscriberView, decisions: Decisions, touched: Iterable[str]) -> SubscriberView:
    """``view`` with the customers in ``touched`` rebuilt under ``decisions`` (pure)."""
    inv = getattr(view.by_id, "inventory", None)
    if inv is not None:           # lazily built subscribers were built under the old decisions
        by_id = SubscriberMap(view.by_id, inv, partial(subscriber_of, decisions=decisions))
        decided = decisions.customers()
    else:
        by_id, decided = dict(view.by_id), set()
    for cid in touched:
        if inv is not None and cid in inv.index and cid not in decided and cid not in view.customers.static:
            dict.pop(by_id, cid, None)          # an inventory customer without a decision: built when asked
            continue
        c = view.customers.get(cid)
        if c is not None:
            by_id[cid] = subscriber_of(c, decisions)
        elif cid is not None:                   # an implicit customer (a session's) decided on
            by_id[cid] = implicit_subscriber(cid, decisions)
    return SubscriberView(by_id, view.prefixes, view.customers, decisions)
