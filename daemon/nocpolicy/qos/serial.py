"""Plans as JSON: what a controller sends router agents over MQTT (stable format, version 1).

``plan_to_json(plan) -> dict`` and ``plan_from_json(data) -> Plan`` round-trip
exactly. ``plan_from_json`` validates the shape and every value (prefixes, class
ids, rates, interface names, leaf kind) and raises :class:`EnforcementError`
naming the bad field, so a malformed message never reaches the kernel.
"""

from __future__ import annotations

import ipaddress
import re

from ..errors import EnforcementError
from .plan import EmergencyPlan, Entry, HtbClass, InterfaceTree, Plan
from .upload import Upload

FORMAT = "nocpolicy.qos.plan/1"
LEAVES = ("pfifo", "sfq", "fq_codel")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:@() -]{1,80}$")


def _entry(e: Entry) -> list:
    return [e.prefix, e.minor, e.note]


def _tree(t: InterfaceTree) -> dict:
    return {"name": t.name, "rate": t.rate,
            "classes": [[c.minor, c.parent, c.name, c.rate, c.ceil, c.prio, c.leaf] for c in t.classes]}


def plan_to_json(plan: Plan) -> dict:
    """The plan as JSON; ``uploads``, ``up_caps`` and ``redirect`` appear only with upload caps
    (an older agent reads a download-only plan unchanged)."""
    out = _plan_json(plan)
    if plan.uploads:
        out["uploads"] = [{"dev": u.dev, **_tree(u.tree)} for u in plan.uploads]
        out["up_caps"] = [_entry(e) for e in plan.up_caps]
        out["redirect"] = plan.redirect
    return out


def _plan_json(plan: Plan) -> dict:
    em = plan.emergency
    return {
        "format": FORMAT,
        "leaf": plan.leaf,
        "network_control": list(plan.network_control),
        "interfaces": [_tree(t) for t in plan.interfaces],
        "caps": [_entry(e) for e in plan.caps],
        "emergency": None if em is None else {
            "profile": em.profile, "category": em.category, "scope": list(em.scope),
            "priority": [_entry(e) for e in em.priority], "dscp_values": list(em.dscp_values),
            "dscp_sources": [_entry(e) for e in em.dscp_sources], "caps": [_entry(e) for e in em.caps]},
    }


def _fail(path: str, why: str):
    raise EnforcementError(f"plan: {path}: {why}")


def _int(v, path: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _fail(path, f"expected an integer {lo}..{hi}, got {v!r}")
    return v


def _str(v, path: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
        _fail(path, f"invalid value {v!r}")
    return v


def _list(v, path: str) -> list:
    if not isinstance(v, list):
        _fail(path, f"expected a list, got {type(v).__name__}")
    return v


def _entries(v, path: str) -> tuple[Entry, ...]:
    out = []
    for i, e in enumerate(_list(v, path)):
        p = f"{path}[{i}]"
        if not isinstance(e, list) or len(e) != 3:
            _fail(p, "expected [prefix, class minor, note]")
        try:
            prefix = str(ipaddress.ip_network(e[0], strict=True))
        except (TypeError, ValueError) as exc:
            _fail(p, f"bad prefix: {exc}")
        note = e[2] if isinstance(e[2], str) else _fail(p, "note must be a string")
        out.append(Entry(prefix, _int(e[1], p, 0, 0xFFFF), note))
    return tuple(out)


def plan_from_json(data) -> Plan:
    if not isinstance(data, dict):
        _fail("(body)", "expected a JSON object")
    if data.get("format") != FORMAT:
        _fail("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    leaf = data.get("leaf")
    if leaf not in LEAVES:
        _fail("leaf", f"expected one of {', '.join(LEAVES)}, got {leaf!r}")
    trees = tuple(_tree_from(t, f"interfaces[{i}]") for i, t in enumerate(_list(data.get("interfaces"), "interfaces")))
    nc = tuple(_str(s, "network_control", _NAME) for s in _list(data.get("network_control", []), "network_control"))
    em = None
    e = data.get("emergency")
    if e is not None:
        if not isinstance(e, dict):
            _fail("emergency", "expected an object or null")
        em = EmergencyPlan(
            profile=_str(e.get("profile"), "emergency.profile", _NAME),
            category=_str(e.get("category"), "emergency.category", _NAME),
            scope=tuple(_str(s, "emergency.scope", _IFNAME) for s in _list(e.get("scope"), "emergency.scope")),
            priority=_entries(e.get("priority", []), "emergency.priority"),
            dscp_values=tuple(_int(v, "emergency.dscp_values", 0, 63) for v in _list(e.get("dscp_values", []),
                                                                                      "emergency.dscp_values")),
            dscp_sources=_entries(e.get("dscp_sources", []), "emergency.dscp_sources"),
            caps=_entries(e.get("caps", []), "emergency.caps"),
        )
    uploads = tuple(Upload(_str(u.get("dev") if isinstance(u, dict) else None, f"uploads[{i}].dev", _IFNAME),
                           _str(u.get("name"), f"uploads[{i}].name", _IFNAME), _tree_from(u, f"uploads[{i}]"))
                    for i, u in enumerate(_list(data.get("uploads", []), "uploads")))
    redirect = data.get("redirect", "matchall" if uploads else "")
    if uploads and redirect not in ("matchall", "u32"):
        _fail("redirect", f"expected matchall or u32, got {redirect!r}")
    return Plan(leaf=leaf, interfaces=trees, network_control=nc,
                caps=_entries(data.get("caps", []), "caps"), emergency=em, uploads=uploads,
                up_caps=_entries(data.get("up_caps", []), "up_caps"), redirect=redirect if uploads else "")


def _tree_from(t, p: str) -> InterfaceTree:
    if not isinstance(t, dict):
        _fail(p, "expected an object")
    classes = []
    for j, c in enumerate(_list(t.get("classes"), f"{p}.classes")):
        q = f"{p}.classes[{j}]"
        if not isinstance(c, list) or len(c) != 7:
            _fail(q, "expected [minor, parent, name, rate, ceil, prio, leaf]")
        classes.append(HtbClass(_int(c[0], q, 1, 0xFFFF), _int(c[1], q, 0, 0xFFFF), _str(c[2], q, _NAME),
                                _int(c[3], q, 1, 10**13), _int(c[4], q, 1, 10**13), _int(c[5], q, 0, 7),
                                bool(c[6])))
    return InterfaceTree(_str(t.get("name"), f"{p}.name", _IFNAME), _int(t.get("rate"), f"{p}.rate", 1, 10**13),
                         tuple(classes))
