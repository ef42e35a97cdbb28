"""The kinds of fleet state: one small adapter per kind, keyed by its name (the registry).

An adapter says, for the controller, what the state is now (entries by scope: ``FLEET`` or a
node name) and tells when it changed; for the agent, how to check a whole snapshot and how
to apply changes locally (through the area that owns the state, so the DNS guard, detection
and workers follow). Keys are strings, values JSON.

* ``DecisionKind(kind)``: any runtime decision of ``subscribers``: consent by purpose. Key =
  customer id; scope = the customer's ``nodes`` (all nodes: FLEET). The ``cc-blocking``
  consent travels as ``optout`` (the operators' word for it, Art. 45(4); the value is the
  opt-out, the negation of the consent); the other purposes as ``consent-<purpose>``.
  The suspensions in force travel as kind ``suspension`` (value: what the agent enforces and
  its notice page shows; None: lifted). The controller keeps the rows, timers and letters
  (docs/suspension.md): a timed start or end there is a new version here.
* ``ListEntries``: runtime entries of block lists (``list.update``). Key = ``<list>/<name>``,
  value ``true``; scope FLEET.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ..dns.sources import check_names
from ..interfaces import FleetDecisions, RuntimeLists
from ..subscribers.model import CONSENT, KINDS, PURPOSES
from ..subscribers.suspensions import check_fleet_value
from .statewire import FLEET

Items = list[tuple[str, str, Any]]        # (key, scope, value or None = gone)
OnChange = Callable[[Items | None], None]  # None: anything may have changed (recompute everything)


class StateKind(Protocol):
    name: str                      # topic level and metric label
    what: str                      # for messages: "opt-outs"
    commands: tuple[str, ...]      # commands an agent refuses: the controller owns this state

    async def current(self) -> dict[str, dict]:
        """Controller: every entry by scope (FLEET or a node name)."""
        ...

    def on_change(self, fn: OnChange) -> None:
        """Controller: call ``fn(items)`` (or ``fn(None)``) when the state changed."""

    def check(self, entries: dict) -> None:
        """Agent: raise ValueError naming the first bad entry of a whole state."""

    async def apply(self, changes: dict, *, actor: str, note: str) -> None:
        """Agent: apply effective changes (key -> value, None = gone) locally."""


class DecisionKind:
    def __init__(self, kind: str, source: FleetDecisions, *, name: str | None = None, what: str = "",
                 commands: tuple[str, ...] = (), negate: bool = False,
                 valid: Callable[[Any], Any] | None = None):
        self.kind = kind                     # the decision kind in subscribers
        self.source = source
        self.name = name or kind             # topic level and metric label
        self.what = what or f"{kind} decisions"
        self.commands = commands
        self._negate = negate                # travels as the negation (opt-out = not consent)
        self._valid = valid or KINDS[kind]   # checks one value (raises ValueError)

    def _out(self, value):
        return (not value) if self._negate and value is not None else value

    async def current(self) -> dict[str, dict]:
        view = self.source.view
        out: dict[str, dict] = {FLEET: {}}
        for cid, value in view.decisions.of_kind(self.kind).items():
            for scope in _scopes(view, cid):
                out.setdefault(scope, {})[cid] = self._out(value)
        return out

    def on_change(self, fn: OnChange) -> None:
        def watcher(view, change) -> None:
            if change.customers is None:
                fn(None)
                return
            values = view.decisions.of_kind(self.kind)
            fn([(cid, scope, self._out(values.get(cid))) for cid in change.customers
                for scope in _scopes(view, cid)])
        self.source.watch(watcher)

    def check(self, entries: dict) -> None:
        for cid, value in entries.items():
            try:
                self._valid(value)
            except ValueError as exc:
                raise ValueError(f"{cid}: {exc}") from None

    async def apply(self, changes: dict, *, actor: str, note: str) -> None:
        await self.source.adopt(self.kind, {cid: self._out(v) for cid, v in changes.items()},
                                actor=actor, note=note)


def _scopes(view, cid: str) -> tuple[str, ...]:
    c = view.customers.get(cid)
    nodes = tuple(sorted(c.nodes)) if c is not None and c.nodes else ()
    return nodes or (FLEET,)


class ListEntries:
    name = "lists"
    what = "list entries"
    commands = ("list.update",)

    def __init__(self, lists: RuntimeLists):
        self.lists = lists

    async def current(self) -> dict[str, dict]:
        entries = await asyncio.to_thread(self.lists.runtime_entries)
        return {FLEET: {f"{lid}/{n}": True for lid, names in entries.items() for n in names}}

    def on_change(self, fn: OnChange) -> None:
        def watcher(list_id: str, added: list[str], removed: list[str]) -> None:
            fn([(f"{list_id}/{n}", FLEET, True) for n in added]
               + [(f"{list_id}/{n}", FLEET, None) for n in removed])
        self.lists.watch_runtime_entries(watcher)

    def check(self, entries: dict) -> None:
        names: dict[str, list[str]] = {}
        for key, value in entries.items():
            lid, _, name = key.partition("/")
            if value is not True:
                raise ValueError(f"{key}: value must be true, not {value!r}")
            if not self.lists.has_list(lid):
                raise ValueError(f"{key}: unknown list {lid!r} on this node")
            names.setdefault(lid, []).append(name)
        for lid, ns in names.items():
            _, bad = check_names(ns)
            if bad:
                raise ValueError(f"{lid}/{bad[0]}: not a domain name")

    async def apply(self, changes: dict, *, actor: str, note: str) -> None:
        by_list: dict[str, tuple[list, list]] = {}
        for key, value in changes.items():
            lid, _, name = key.partition("/")
            add, remove = by_list.setdefault(lid, ([], []))
            (add if value else remove).append(name)
        for lid, (add, remove) in sorted(by_list.items()):
            ok_add, _ = check_names(add)
            ok_rm, _ = check_names(remove)
            await self.lists.adopt_entries(lid, ok_add, ok_rm, actor=actor, reason=note)


# the controller owns suspensions (Art. 25-27): an agent refuses these, naming it
SUSPENSION_COMMANDS = ("suspension.suspend", "suspension.resume", "suspension.terminate", "abolition.announce")


def build_kinds(decisions: FleetDecisions | None, lists: RuntimeLists | None) -> dict[str, StateKind]:
    """The registry: kind name -> adapter, for the providers this daemon runs with."""
    kinds: dict[str, StateKind] = {}
    if decisions is not None:
        kinds["optout"] = DecisionKind(CONSENT + "cc-blocking", decisions, name="optout", negate=True,
                                       what="opt-outs and consents", commands=("optout.set", "consent.set"))
        for purpose in PURPOSES:
            if purpose != "cc-blocking":
                kinds[f"consent-{purpose}"] = DecisionKind(CONSENT + purpose, decisions, name=f"consent-{purpose}",
                                                           what=f"{purpose} consents")
        kinds["suspension"] = DecisionKind("suspension", decisions, valid=check_fleet_value,
                                           what="suspensions, terminations and abolition notices",
                                           commands=SUSPENSION_COMMANDS)
    if lists is not None:
        kinds["lists"] = ListEntries(lists)
    return kinds
