"""The values the subscribers area hands out: all immutable, all pure data."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Subscriber:
    """What applies to one client: the customer's effective state (the DNS hot path reads
    ``customer``, ``security``, ``optional`` and ``refuse``)."""

    customer: str | None                       # customer id; None: source outside every customer prefix
    security: bool = True                      # security (C&C) lists apply: not opted out
    optional: frozenset[str] = frozenset()     # optional list ids opted in to
    refuse: bool = False                       # answer REFUSED to everything (unknown_clients: refuse)
    plan: str | None = None
    tags: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    prefixes: tuple[Prefix, ...] = ()          # the customer's static prefixes (policy)
    optout_source: str = "policy"              # where ``security`` comes from: "policy" | "runtime"

    @property
    def id(self) -> str | None:
        return self.customer

    @property
    def opted_out(self) -> bool:
        """Opted out of the security lists (Art. 45(4)); never true for an unknown client."""
        return self.customer is not None and not self.security


def _as_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, not {v!r}")
    return v


# Every kind of runtime decision and how its value is checked (values come from the state
# store and, in worker processes, from the main process's pipe). Consent by purpose and
# suspensions add a kind here and a rule in view.subscriber_of; consumers do not change.
def _as_list(v: Any) -> list:
    if not isinstance(v, list):
        raise ValueError(f"must be a list, not {type(v).__name__}")
    return v


# "sessions": live-session changes sent to the DNS workers (sessions/replica.py); applied to
# the address lookup, not kept among the decisions.
KINDS = {"optout": _as_bool, "sessions": _as_list}


@dataclass(frozen=True, slots=True)
class Decision:
    """One runtime decision about one customer, e.g. ``Decision("optout", "c1001", True)``."""

    kind: str
    customer: str
    value: Any

    def as_json(self) -> dict:
        return {"kind": self.kind, "customer": self.customer, "value": self.value}

    @classmethod
    def from_json(cls, d: Mapping) -> Decision:
        kind, customer = d.get("kind"), d.get("customer")
        if kind not in KINDS:
            raise ValueError(f"unknown decision kind {kind!r} (known: {', '.join(KINDS)})")
        if not isinstance(customer, str) or not customer:
            raise ValueError(f"decision {kind}: customer must be a non-empty string")
        value = d.get("value")      # None: the decision is withdrawn (the policy's value applies)
        return cls(kind, customer, None if value is None else KINDS[kind](value))


class Decisions:
    """Every runtime decision in force: (kind, customer) -> value. Immutable; ``with_``
    returns a new one."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[tuple[str, str], Any] | None = None):
        self._items = dict(items or {})

    def get(self, kind: str, customer: str, default: Any = None) -> Any:
        return self._items.get((kind, customer), default)

    def with_(self, d: Decision) -> Decisions:
        return Decisions({**self._items, (d.kind, d.customer): d.value})

    def changed(self, kind: str, values: Mapping[str, Any]) -> Decisions:
        """A new Decisions with ``kind`` set for each customer in ``values`` (None: the decision is
        withdrawn, the policy's value applies again)."""
        items = dict(self._items)
        for cid, v in values.items():
            if v is None:
                items.pop((kind, cid), None)
            else:
                items[(kind, cid)] = v
        return Decisions(items)

    def of_kind(self, kind: str) -> dict[str, Any]:
        """customer -> value of every decision of ``kind``."""
        return {cid: v for (k, cid), v in self._items.items() if k == kind}

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class Change:
    """What a pushed view changed: ``customers`` None = any customer (a policy change);
    ``addresses`` = the address -> customer map changed (drop address caches)."""

    customers: frozenset[str] | None = None
    addresses: bool = True

    @classmethod
    def of(cls, *customers: str) -> Change:
        return cls(frozenset(customers), False)


EVERYTHING = Change()
