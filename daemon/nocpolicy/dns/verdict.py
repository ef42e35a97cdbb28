"""The DNS verdict: a PURE function of (subscriber state, lists, name) -> Verdict.

Enforcement order (a customer's opt-out must never lift a mandatory list):

1. **mandatory** lists (Art. 23(2), e.g. CSAM) -- always, for everybody; EDE 16 Censored;
2. **security** lists (Art. 45(4), C&C) -- unless the customer opted out; EDE 15 Blocked;
3. **optional** lists -- only those the customer opted in to; EDE 17 Filtered.

Inside a class, lists are tried in policy order; the first list that matches
(after its own ``allow`` exceptions) decides. A sinkhole answer carries EDE 4.

Stable API (passive detection is handed the running DnsGuard as detect/guard.py's
``Guard``)::

    v = guard.judge("192.0.2.10", "Evil.Example.")  # -> Verdict (customer found by longest prefix)
    if v.blocked:
        guard.record_detection(v, "192.0.2.10", "evil.example", source="passive")

or, without a running guard (pure)::

    from nocpolicy.dns.verdict import Subscriber, judge, explain   # Subscriber: subscribers/model.py
    v = judge(Subscriber("c1001", security=True, optional=frozenset()), list_set, "evil.example")

``Verdict`` fields: ``action`` ("allow", "nxdomain", "nodata", "refused",
"sinkhole"), ``customer`` (id or None for an unknown client), ``list``,
``cls``, ``entry`` (the list entry that matched, e.g. ``*.evil.example``),
``name`` (the name judged: the query name, or the CNAME target that matched),
``reason``; ``blocked`` is True for every action but "allow".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..subscribers.model import Subscriber
from .lists import CompiledList, ListSet, normalize, suffixes

__all__ = ["Subscriber", "Verdict", "explain", "judge", "judge_suffixes"]

# RFC 8914 Extended DNS Error codes per class; 4 (Forged Answer) for sinkhole answers.
EDE_FOR_CLASS = {"mandatory": 16, "security": 15, "optional": 17}
EDE_FORGED = 4
EDE_PROHIBITED = 18


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str                      # allow | nxdomain | nodata | refused | sinkhole
    customer: str | None = None
    list: str | None = None
    cls: str | None = None
    entry: str | None = None
    name: str | None = None
    reason: str = ""
    sinkhole_a: str | None = None
    sinkhole_aaaa: str | None = None
    via_cname: bool = field(default=False)

    @property
    def blocked(self) -> bool:
        return self.action != "allow"

    @property
    def ede(self) -> int | None:
        """The RFC 8914 info-code for the answer, or None for allowed names."""
        if self.action == "allow":
            return None
        if self.action == "sinkhole":
            return EDE_FORGED
        if self.cls is None:
            return EDE_PROHIBITED
        return EDE_FOR_CLASS[self.cls]

    def as_dict(self) -> dict:
        return {"action": self.action, "blocked": self.blocked, "customer": self.customer,
                "list": self.list, "class": self.cls, "entry": self.entry, "name": self.name,
                "reason": self.reason, "ede": self.ede, "via_cname": self.via_cname}


ALLOW = Verdict("allow")


def _hit(sub: Subscriber, lst: CompiledList, entry: str, override: str | None, name: str) -> Verdict:
    action = lst.action
    a, aaaa = lst.sinkhole_a, lst.sinkhole_aaaa
    if override is not None:
        if override.startswith("sinkhole:"):
            addr = override[9:]
            action = "sinkhole"
            a, aaaa = (None, addr) if ":" in addr else (addr, None)
        else:
            action = override
    return Verdict(action, sub.customer, lst.id, lst.cls, entry, name,
                   f"{lst.cls} list {lst.id} matches {entry}", a, aaaa)


def judge_suffixes(sub: Subscriber, lists: ListSet, sfx: list[str]) -> Verdict | None:
    """Hot path: the blocking verdict for a normalized name's suffixes, or None if allowed."""
    for lst in lists.mandatory:
        m = lst.match(sfx)
        if m is not None:
            return _hit(sub, lst, m.entry, m.action, sfx[0])
    if sub.security:
        for lst in lists.security:
            m = lst.match(sfx)
            if m is not None:
                return _hit(sub, lst, m.entry, m.action, sfx[0])
    if sub.optional:
        for lst in lists.optional:
            if lst.id in sub.optional:
                m = lst.match(sfx)
                if m is not None:
                    return _hit(sub, lst, m.entry, m.action, sfx[0])
    return None


def judge(sub: Subscriber, lists: ListSet, name: str) -> Verdict:
    """The verdict for one name (any case, trailing dot or not)."""
    if sub.refuse:
        return Verdict("refused", None, reason="unknown client (unknown_clients: refuse)")
    n = normalize(name)
    if not n:
        return Verdict("allow", sub.customer, name=n, reason="root name")
    v = judge_suffixes(sub, lists, suffixes(n))
    return v if v is not None else Verdict("allow", sub.customer, name=n, reason="no list applies")


def explain(sub: Subscriber, lists: ListSet, name: str) -> dict:
    """Every list that matches the name (whether it applies or not), and the verdict."""
    n = normalize(name)
    sfx = suffixes(n) if n else []
    rows = []
    for lst in lists.all():
        raw = lst.index.match(sfx) if sfx else None
        allowed_by = lst.allow.covers(sfx) if (raw is not None and sfx) else None
        if lst.cls == "mandatory":
            applies, why = True, "mandatory lists apply to every client"
        elif lst.cls == "security":
            applies = sub.security
            why = "security lists apply" if applies else "customer opted out of security lists"
        else:
            applies = lst.id in sub.optional
            why = "customer opted in" if applies else "customer did not opt in"
        if raw is not None:
            rows.append({"list": lst.id, "class": lst.cls, "entry": raw.entry,
                         "action": raw.action or lst.action,
                         "allowed_by": allowed_by, "applies": applies and allowed_by is None,
                         "why": why if allowed_by is None else f"allow exception {allowed_by}"})
    return {"name": n, "customer": sub.customer, "security_lists": sub.security,
            "optional_lists": sorted(sub.optional), "matches": rows,
            "verdict": judge(sub, lists, n).as_dict()}
