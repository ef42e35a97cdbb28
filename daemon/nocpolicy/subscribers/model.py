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
    rate_cap: int | None = None                # a runtime decision caps both directions (bit/s; qos reads
                                               # it: the lower of it and the plan's caps applies)
    suspension: Suspended | None = None        # an active suspension (Art. 25), None: not suspended
    consent: frozenset[str] = frozenset(("cc-blocking", "analysis"))   # purposes on (PURPOSES below)

    def consents(self, purpose: str) -> bool:
        """Is ``purpose`` on for this client (Art. 45(1)(2)(4)(5)); an unknown client has the
        defaults (blocking and analysis on, nothing handed to ICT-ISAC)."""
        return purpose in self.consent

    @property
    def id(self) -> str | None:
        return self.customer

    @property
    def opted_out(self) -> bool:
        """Opted out of the security lists (Art. 45(4)); never true for an unknown client."""
        return self.customer is not None and not self.security


MODES = ("walled-garden", "throttle", "block")
CAUSES = ("nonpayment", "obligations", "prohibited-use", "wholesale")


@dataclass(frozen=True, slots=True)
class Suspended:
    """An active suspension as the readers need it: the DNS guard (walled-garden and block answer
    with the notice page), qos (throttle: ``rate`` bit/s both ways), the notice page (what it says)."""

    id: int
    mode: str                       # walled-garden | throttle | block
    cause: str                      # nonpayment | obligations | prohibited-use | wholesale
    reason: str
    start: str                      # ISO 8601
    end: str | None = None          # None: until resumed
    rate: int | None = None         # throttle: bit/s

    @property
    def walled(self) -> bool:
        """DNS answers the notice page (walled-garden, block); throttle leaves DNS alone."""
        return self.mode != "throttle"

    def as_json(self) -> dict:
        return {"id": self.id, "mode": self.mode, "cause": self.cause, "reason": self.reason,
                "start": self.start, "end": self.end, "rate": self.rate}


def _as_suspension(v: Any) -> dict | None:
    """None (lifted) or a Suspended's JSON (checked: it comes from the store or a worker pipe)."""
    if v is None:
        return None
    if not isinstance(v, Mapping):
        raise ValueError(f"must be an object or null, not {type(v).__name__}")
    if v.get("mode") not in MODES or v.get("cause") not in CAUSES or not isinstance(v.get("id"), int):
        raise ValueError(f"not a suspension: {dict(v)!r}")
    return dict(v)


def suspended_of(v: Mapping | None) -> Suspended | None:
    if v is None:
        return None
    return Suspended(v["id"], v["mode"], v["cause"], str(v.get("reason", "")), str(v.get("start", "")),
                     v.get("end"), v.get("rate"))


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


# The purposes a customer consents to, each with its default and the clause it comes from
# (Art. 45): cc-blocking replaces the opt-out (on = blocked), analysis feeds the summaries,
# isac-source and isac-probe let records go to ICT-ISAC (off unless consented).
PURPOSES = {"cc-blocking": True, "analysis": True, "isac-source": False, "isac-probe": False}
CLAUSES = {"cc-blocking": "45(4)", "analysis": "45(5)", "isac-source": "45(1)", "isac-probe": "45(2)"}
CONSENT = "consent:"


def _as_rate(v: Any) -> int | None:
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 8_000 <= v <= 10**13):
        raise ValueError(f"must be a rate in bit/s (8000..1e13) or null, not {v!r}")
    return v


# "ratecap": cap a customer's traffic in both directions at a rate (bit/s; null lifts it), e.g.
# a throttle suspension; qos applies the lower of it and the plan's caps.
# "sessions": live-session changes sent to the DNS workers (sessions/replica.py); applied to
# the address lookup, not kept among the decisions.
# "suspension": the customer's active suspension (Art. 25; suspension/), null when lifted; a
# throttle suspension also caps the rate (view.subscriber_of).
# "consent:<purpose>": a customer's consent to one purpose (true/false); "optout" is the old
# form of consent:cc-blocking (the opposite value; a decision from an older peer still applies).
KINDS = {"optout": _as_bool, "ratecap": _as_rate, "sessions": _as_list, "suspension": _as_suspension,
         **{CONSENT + p: _as_bool for p in PURPOSES}}


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

    def customers(self) -> set[str]:
        """Every customer id a decision names."""
        return {cid for _, cid in self._items}

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
    ``addresses`` = the address -> customer map changed (drop address caches); ``sessions``
    = the session changes behind it, ``(op, addrs, customer, implicit)`` each (empty: not
    only sessions changed), for readers that update incrementally (qos)."""

    customers: frozenset[str] | None = None
    addresses: bool = True
    sessions: tuple = ()

    @classmethod
    def of(cls, *customers: str) -> Change:
        return cls(frozenset(customers), False)


EVERYTHING = Change()
