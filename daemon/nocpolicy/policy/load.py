"""Load a policy directory: parse every YAML file, validate the whole, or report every problem.

``load_policy(dir)`` returns a :class:`Policy` or raises :class:`PolicyInvalid`
whose problems read ``file:line: path.to.field: reason``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from pathlib import Path

from ..clock import utcnow
from ..errors import PolicyInvalid
from ..gcpause import gc_paused
from . import customers as cust
from .advisories import AdvisorySettings, read_advisories
from .control import ControlSettings, read_control
from .detect import DetectSettings, read_detect
from .dnsconf import DnsSettings, read_dns
from .emergency import read_interfaces, read_profiles
from .fields import Problems, convert, ids_unique, obj
from .invcheck import check_inventory
from .inventory import InventorySettings, read_inventory, read_inventory_settings
from .invtable import Customers
from .maintenance import MaintenanceSettings
from .maintenance import reader as maintenance_reader
from .model import Policy, Settings, read_settings
from .nodes import Loc, Node, parse_yaml
from .sessions import SessionSettings, check_sessions, load_secrets, read_sessions
from .suspension import SuspensionSettings, read_suspension

LIST_SECTIONS = ("customers", "plans", "emergency_profiles", "interfaces")
MAP_SECTIONS = ("settings", "dns", "maintenance", "control", "detect", "sessions", "inventory", "suspension",
                "advisories")


def policy_files(directory: str | os.PathLike) -> list[Path]:
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not p.name.startswith("."))


def content_version(files: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in sorted(files):
        h.update(name.encode() + b"\0" + data + b"\0")
    return h.hexdigest()[:12]


def load_policy(directory: str | os.PathLike, *, now: dt.datetime | None = None,
                previous: Policy | None = None) -> Policy:
    with gc_paused():          # a large CSV inventory: the cyclic GC took half the load's CPU
        return _load_policy(Path(directory), now, previous)


def _load_policy(directory: Path, now: dt.datetime | None, previous: Policy | None) -> Policy:
    files = _policy_files_or_refuse(directory)
    problems = Problems()
    raw, sections = _read_sections(directory, files, problems)
    policy = _build(directory, files, raw, sections, problems, now, previous)
    check_references(policy, problems)
    check_sessions(policy.sessions, problems)
    sessions, secret_digests = load_secrets(policy.sessions, str(directory), problems)
    digests = list_digests(policy, problems)
    if problems:
        raise PolicyInvalid(sorted(problems, key=lambda p: (p.loc.file, p.loc.line, p.path)))
    # The version covers the local list files (and RADIUS secrets) too: editing one is a policy change.
    raw.extend((f"list:{lid}", d.encode()) for lid, d in digests.items())
    raw.extend((k, d.encode()) for k, d in secret_digests.items())
    return dataclasses.replace(policy, version=content_version(raw), list_digests=digests, sessions=sessions)


def _policy_files_or_refuse(directory: Path) -> list[Path]:
    """The YAML files of the directory; PolicyInvalid when there is no such directory or no file."""
    if not directory.is_dir():
        raise PolicyInvalid([_top(str(directory), f"policy directory {directory} does not exist")])
    try:
        files = policy_files(directory)
    except OSError as exc:
        raise PolicyInvalid([_top(str(directory), f"cannot read the policy directory: {exc.strerror}")]) from None
    if not files:
        raise PolicyInvalid([_top(str(directory), "no *.yaml files in the policy directory")])
    return files


def _read_sections(directory: Path, files: list[Path], problems: Problems
                   ) -> tuple[list[tuple[str, bytes]], dict[str, list[Node]]]:
    """Every file's bytes (for the version) and its top-level sections, gathered by section name."""
    raw: list[tuple[str, bytes]] = []
    sections: dict[str, list[Node]] = {k: [] for k in LIST_SECTIONS + MAP_SECTIONS}
    for path in files:
        rel = str(directory / path.name)   # as the operator named the directory: clickable, greppable
        try:
            data = path.read_bytes()
        except OSError as exc:
            problems.add(Loc(rel, 1), "", f"cannot read: {exc.strerror}")
            continue
        raw.append((path.name, data))
        root = _parse_file(data, rel, problems)
        if root is None:
            continue
        for key, node in root.value.items():
            if key not in sections:
                problems.add(node.key_loc, key, f"unknown section (expected one of: {', '.join(sorted(sections))})")
            elif key in MAP_SECTIONS and sections[key]:
                problems.add(node.key_loc, key, f"section already defined at {sections[key][0].key_loc}")
            else:
                sections[key].append(node)
    return raw, sections


def utf8_position(data: bytes, offset: int) -> tuple[int, int]:
    """(line, column) of byte ``offset``, both from 1; the column counts characters."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    col = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, col


def _parse_file(data: bytes, rel: str, problems: Problems) -> Node | None:
    """One file's root mapping, or None (the reason added to ``problems``)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = utf8_position(data, exc.start)
        problems.add(Loc(rel, line), "", f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, "
                     f"column {col} ({exc.reason})")
        return None
    root = parse_yaml(text, rel, problems)
    if root is None:
        return None
    if not isinstance(root.value, dict):
        problems.add(root, "", "a policy file must be a mapping of sections "
                     f"({', '.join(MAP_SECTIONS + LIST_SECTIONS)})")
        return None
    return root


def _build(directory: Path, files: list[Path], raw: list[tuple[str, bytes]], sections: dict[str, list[Node]],
           problems: Problems, now: dt.datetime | None, previous: Policy | None = None) -> Policy:
    """The Policy the sections describe; each section read by its module (problems collected)."""
    def single(name, reader, default):
        nodes = sections[name]
        if not nodes:
            return default
        value = convert(nodes[0], reader, problems)
        return default if value is None else value

    def many(name, reader):
        out = []
        for node in sections[name]:
            out.extend(convert(node, reader, problems) or ())
        return tuple(out)

    settings = single("settings", obj(read_settings), Settings())
    inventory = single("inventory", read_inventory_settings, InventorySettings())
    customers = many("customers", cust.read_customers)
    if inventory.file is not None:   # the CSV inventory (unchanged rows of the previous load reused)
        prev = getattr(previous.customers, "inventory", None) if previous is not None else None
        table, inv_digest = read_inventory(directory / inventory.file, str(directory / inventory.file), problems,
                                           prev)
        raw.append((f"inventory:{inventory.file}", inv_digest.encode()))
        if table is not None:
            customers = Customers(customers, table)
    return Policy(
        directory=str(directory),
        version=content_version(raw),
        loaded_at=now or utcnow(),
        files=tuple(p.name for p in files),
        settings=settings,
        customers=customers,
        plans=many("plans", cust.read_plans),
        dns=single("dns", read_dns, DnsSettings()),
        profiles=many("emergency_profiles", read_profiles),
        interfaces=many("interfaces", read_interfaces),
        maintenance=single("maintenance", maintenance_reader(settings.timezone), MaintenanceSettings()),
        control=single("control", read_control, ControlSettings()),
        detect=single("detect", read_detect, DetectSettings()),
        sessions=single("sessions", read_sessions, SessionSettings()),
        suspension=single("suspension", read_suspension, SuspensionSettings()),
        advisories=single("advisories", read_advisories, AdvisorySettings()),
    )


def list_digests(policy: Policy, problems: Problems) -> dict[str, str]:
    """SHA-256 of each local list file (by list id); unreadable files become problems."""
    out = {}
    for bl in policy.dns.lists:
        if bl.source is None or "://" in bl.source:
            continue
        path = Path(policy.directory) / bl.source
        if not path.is_file():
            continue   # reported by check_references
        try:
            out[bl.id] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            problems.add(bl.locs.get("source", bl.loc), f"dns.lists[id={bl.id}].source",
                         f"cannot read {bl.source!r}: {exc.strerror}")
    return out


def _top(file: str, reason: str):
    from .nodes import Problem
    return Problem(Loc(file, 0), "", reason)


def check_references(policy: Policy, problems: Problems) -> None:
    """Cross-section checks: duplicate ids, dangling references, overlapping prefixes."""
    static = getattr(policy.customers, "static", policy.customers)
    inventory = getattr(policy.customers, "inventory", None)
    customers = ids_unique(static, "customers", problems)
    plans = ids_unique(policy.plans, "plans", problems)
    lists = ids_unique(policy.dns.lists, "dns.lists", problems)
    ids_unique(policy.dns.upstreams, "dns.upstreams", problems)
    ids_unique(policy.profiles, "emergency_profiles", problems)
    ids_unique(policy.interfaces, "interfaces", problems)
    ids_unique(policy.maintenance.windows, "maintenance.windows", problems)
    ids_unique(policy.control.grants, "control.grants", problems)
    cust.check_prefix_overlaps(static, problems, inventory)
    if inventory is not None:
        check_inventory(inventory, customers, plans, problems)
        customers = policy.customers_by_id

    def ref(loc, path, value, index, what):
        if value is not None and value not in index:
            known = ", ".join(sorted(index)[:8]) or "none defined"
            problems.add(loc, path, f"unknown {what} {value!r} (known: {known})")

    for c in static:
        where = f"customers[id={c.id}]"
        ref(c.locs.get("plan", c.loc), f"{where}.plan", c.plan, plans, "plan")
        for lid in c.optional_lists:
            ref(c.locs.get("optional_lists", c.loc), f"{where}.optional_lists", lid, lists, "list")
            bl = lists.get(lid)
            if bl is not None and bl.cls != "optional":
                problems.add(c.locs.get("optional_lists", c.loc), f"{where}.optional_lists",
                             f"list {lid!r} is {bl.cls}, not optional: customers cannot opt in or out of it here")
    for p in policy.profiles:
        where = f"emergency_profiles[id={p.id}]"
        for cid in p.priority_customers:
            ref(p.priority_locs.get("customers", p.loc), f"{where}.priority.customers", cid, customers, "customer")
        for cid in p.trusted_dscp.customers:
            ref(p.trusted_dscp.locs.get("customers", p.loc), f"{where}.priority.dscp.customers", cid,
                customers, "customer")
    for w in policy.maintenance.windows:
        where = f"maintenance.windows[id={w.id}]"
        for cid in w.scope.customers:
            ref(w.locs.get("scope", w.loc), f"{where}.scope.customers", cid, customers, "customer")
    for bl in policy.dns.lists:
        if bl.source is None:   # already reported
            continue
        if "://" not in bl.source:
            path = Path(policy.directory) / bl.source
            if not path.is_file():
                problems.add(bl.locs.get("source", bl.loc), f"dns.lists[id={bl.id}].source",
                             f"file {bl.source!r} not found (relative to {policy.directory})")
        elif not bl.source.lower().startswith(("http://", "https://")):
            problems.add(bl.locs.get("source", bl.loc), f"dns.lists[id={bl.id}].source",
                         f"{bl.source!r}: only local files and http(s) URLs are supported")
