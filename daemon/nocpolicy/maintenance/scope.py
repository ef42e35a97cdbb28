"""Which customers a window affects, and which windows overlap (pure)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ..policy.customers import Customer
from ..policy.maintenance import Scope


def affected(scope: Scope, customers: Iterable[Customer]) -> tuple[str, ...]:
    """Customer ids matched by any of the scope's customer ids, tags, nodes or prefixes."""
    out = []
    for c in customers:
        if (c.id in scope.customers
                or any(t in c.tags for t in scope.tags)
                or any(n in c.nodes for n in scope.nodes)
                or any(p.version == q.version and p.overlaps(q) for p in scope.prefixes for q in c.prefixes)):
            out.append(c.id)
    return tuple(sorted(out))


def objects(scope: Scope, customer: Customer) -> tuple[str, ...]:
    """The customer's services the window touches (X-MAINTNOTE-OBJECT-ID): prefixes, else the account."""
    prefixes = [q for q in customer.prefixes
                if not scope.prefixes or any(p.version == q.version and p.overlaps(q) for p in scope.prefixes)]
    return tuple(str(p) for p in prefixes) or (customer.id,)


def scope_to_dict(scope: Scope) -> dict:
    return {"customers": list(scope.customers), "tags": list(scope.tags), "nodes": list(scope.nodes),
            "prefixes": [str(p) for p in scope.prefixes]}


def scope_from_dict(d: dict) -> Scope:
    return Scope(customers=tuple(d.get("customers", ())), tags=tuple(d.get("tags", ())),
                 nodes=tuple(d.get("nodes", ())),
                 prefixes=tuple(ipaddress.ip_network(p) for p in d.get("prefixes", ())))


def describe(scope: Scope) -> str:
    parts = []
    for label, items in (("customers", scope.customers), ("tags", scope.tags), ("nodes", scope.nodes),
                         ("prefixes", [str(p) for p in scope.prefixes])):
        if items:
            parts.append(f"{label}: {', '.join(items)}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Span:
    id: str
    start: dt.datetime
    end: dt.datetime
    customers: frozenset[str]


def overlaps(new: Span, others: Iterable[Span]) -> list[dict]:
    """Other windows whose period and affected customers both intersect ``new``'s."""
    out = []
    for o in others:
        if o.id == new.id or not (o.start < new.end and new.start < o.end):
            continue
        shared = new.customers & o.customers
        if shared:
            out.append({"window": o.id, "customers": len(shared),
                        "from": max(o.start, new.start).isoformat(), "to": min(o.end, new.end).isoformat()})
    return out
