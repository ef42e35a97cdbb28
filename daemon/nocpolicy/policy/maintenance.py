"""The ``maintenance:`` section: notice rules (Art. 24), mail delivery, declared windows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .customers import Prefix
from .fields import (
    Obj,
    as_bool,
    as_email,
    as_id,
    as_prefix,
    as_str,
    as_text,
    as_url,
    duration_range,
    int_range,
    list_of,
    obj,
    one_of,
)
from .nodes import Loc

KINDS = ("planned", "fault")
IMPACTS = ("NO-IMPACT", "REDUCED-REDUNDANCY", "DEGRADED", "OUTAGE")


@dataclass(frozen=True)
class NoticeRules:
    planned_days: int = 14          # Art. 24(2): at least 14 days, day of notice not counted
    reminder_before: float = 86400.0
    languages: tuple[str, ...] = ("ja", "en")


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int = 25
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password_file: str | None = None
    sender: str = "noc@localhost"
    timeout: float = 30.0
    copy_to: tuple[str, ...] = ()     # the NOC's own archive copy of every notice (evidence of notice)
    ca_file: str | None = None        # CA bundle to verify the server's certificate (STARTTLS/TLS)


@dataclass(frozen=True)
class Scope:
    customers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    prefixes: tuple[Prefix, ...] = ()


@dataclass(frozen=True)
class Window:
    id: str
    kind: str
    start: dt.datetime
    end: dt.datetime
    reason_ja: str
    reason_en: str
    impact: str = "OUTAGE"
    scope: Scope = Scope()
    urgent: bool = False
    urgent_justification: str = ""
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class MaintenanceSettings:
    notice: NoticeRules = NoticeRules()
    smtp: Smtp | None = None
    alertmanager: str | None = None
    webhooks: bool = False            # POST notices to contacts' webhooks (outbound HTTP to customer URLs)
    windows: tuple[Window, ...] = ()
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


def _rules(o: Obj) -> NoticeRules:
    return NoticeRules(
        planned_days=o.get("planned_days", int_range(14, 365), 14),
        reminder_before=o.get("reminder_before", duration_range(0.0, 30 * 86400.0), 86400.0),
        languages=o.get("languages", list_of(one_of("ja", "en"), min_items=1, unique=True), ("ja", "en")),
    )


def _smtp(o: Obj) -> Smtp:
    return Smtp(
        host=o.req("host", as_text),
        port=o.get("port", int_range(1, 65535), 25),
        starttls=o.get("starttls", as_bool, False),
        tls=o.get("tls", as_bool, False),
        username=o.get("username", as_text, None),
        password_file=o.get("password_file", as_text, None),
        sender=o.get("from", as_email, "noc@localhost"),
        timeout=o.get("timeout", duration_range(1.0, 600.0), 30.0),
        copy_to=o.get("copy_to", list_of(as_email, unique=True), ()) or (),
        ca_file=o.get("ca_file", as_text, None),
    )


def _scope(o: Obj) -> Scope:
    return Scope(
        customers=o.get("customers", list_of(as_id, unique=True), ()) or (),
        tags=o.get("tags", list_of(as_id, unique=True), ()) or (),
        nodes=o.get("nodes", list_of(as_id, unique=True), ()) or (),
        prefixes=o.get("prefixes", list_of(as_prefix, unique=True), ()) or (),
    )


def _reason(o: Obj) -> tuple[str, str]:
    return (o.req("ja", as_text), o.req("en", as_text))


def _window(o: Obj, tz: str) -> Window:
    from .fields import as_datetime

    def when(node, p=None):
        return as_datetime(node, p, tz)

    reason = o.req("reason", obj(_reason)) or (None, None)
    w = Window(
        id=o.req("id", as_id),
        kind=o.req("kind", one_of(*KINDS)),
        start=o.req("start", when),
        end=o.req("end", when),
        reason_ja=reason[0], reason_en=reason[1],
        impact=(o.get("impact", as_str, "OUTAGE") or "OUTAGE").upper(),
        scope=o.get("scope", obj(_scope), Scope()) or Scope(),
        urgent=o.get("urgent", as_bool, False),
        urgent_justification=o.get("urgent_justification", as_str, "") or "",
        loc=o.node.loc, locs=o.locs,
    )
    if w.impact not in IMPACTS:
        o.problems.add(o.locs.get("impact", o.node.loc), f"{o.node.path}.impact",
                       f"{w.impact!r} is not one of: {', '.join(IMPACTS)}")
    if w.start and w.end and w.end <= w.start:
        o.problems.add(o.locs.get("end", o.node.loc), f"{o.node.path}.end", "end must be after start")
    if w.urgent and not w.urgent_justification.strip():
        o.problems.add(o.locs.get("urgent", o.node.loc), f"{o.node.path}.urgent_justification",
                       "an urgent window needs a recorded justification (Art. 24(2) proviso)")
    if w.scope == Scope():
        o.problems.add(o.node.loc, f"{o.node.path}.scope", "a window needs a scope (customers, tags, nodes or prefixes)")
    return w


def reader(tz: str):
    def _maint(o: Obj) -> MaintenanceSettings:
        return MaintenanceSettings(
            notice=o.get("notice", obj(_rules), NoticeRules()) or NoticeRules(),
            smtp=o.get("smtp", obj(_smtp), None),
            alertmanager=o.get("alertmanager", as_url("http", "https"), None),
            webhooks=o.get("webhooks", as_bool, False),
            windows=o.get("windows", list_of(obj(lambda w: _window(w, tz))), ()) or (),
            loc=o.node.loc, locs=o.locs,
        )
    return obj(_maint)


# Readers shared with the maintenance commands (same validation for policy files and commands).
read_reason = _reason
read_scope = _scope
