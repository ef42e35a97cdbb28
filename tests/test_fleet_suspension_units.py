"""Suspensions as fleet state, the parts without a broker: the check of an entry an agent receives,
what an agent keeps in its store (and restores before serving), and the end it enforces by itself."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from nocpolicy.fleet.kinds import SUSPENSION_COMMANDS, DecisionKind
from nocpolicy.store import Store
from nocpolicy.subscribers.model import Decisions
from nocpolicy.subscribers.suspensions import (
    SuspensionStore,
    adopt_suspensions,
    adopted,
    check_fleet_value,
)
from nocpolicy.suspension.fleetend import next_end, overdue

GOOD = {"id": 7, "mode": "walled-garden", "cause": "nonpayment", "reason": "invoice 7 unpaid",
        "start": "2026-03-02T00:00:00+00:00", "end": None, "rate": None}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db.sqlite")
    yield s
    s.close()


def test_a_good_entry_and_a_lift_pass():
    assert check_fleet_value(GOOD) == GOOD
    assert check_fleet_value(None) is None
    thr = {**GOOD, "mode": "throttle", "rate": 1_000_000, "end": "2026-03-09T00:00:00+09:00"}
    assert check_fleet_value(thr) == thr


@pytest.mark.parametrize("change, field", [
    ({"mode": "vacation"}, "mode"),
    ({"cause": "boredom"}, "cause"),
    ({"id": True}, "id"),
    ({"id": 0}, "id"),
    ({"reason": ""}, "reason"),
    ({"reason": "x" * 501}, "reason"),
    ({"start": "yesterday"}, "start"),
    ({"start": "2026-03-02T00:00:00"}, "start"),      # no offset: whose 09:00?
    ({"end": 5}, "end"),
    ({"rate": 10}, "rate"),
    ({"mode": "throttle"}, "rate"),                     # throttle without a rate
    ({"note": "hi"}, "note"),
])
def test_a_bad_entry_is_refused_naming_the_field(change, field):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        check_fleet_value({**GOOD, **change})
    with pytest.raises(ValueError, match=rf"^c-home: {field}: "):    # the kind names the customer too
        DecisionKind("suspension", None, valid=check_fleet_value).check({"c-ok": GOOD, "c-home": {**GOOD, **change}})
    with pytest.raises(ValueError, match="must be an object or null"):
        check_fleet_value(["walled-garden"])


def test_the_commands_an_agent_refuses_are_the_suspension_commands():
    assert set(SUSPENSION_COMMANDS) == {"suspension.suspend", "suspension.resume", "suspension.terminate",
                                        "abolition.announce"}


def test_adopted_suspensions_are_kept_restored_and_audited(store):
    rows = SuspensionStore(store)
    now = "2026-03-02T00:00:05+00:00"
    adopt_suspensions(store, {"c-home": GOOD, "c-two": {**GOOD, "id": 8}}, actor="mqtt:ctl", note="fleet v3",
                      now=now)
    assert rows.active_decisions() == {"c-home": GOOD, "c-two": {**GOOD, "id": 8}}
    adopt_suspensions(store, {"c-two": None, "c-gone": None}, actor="mqtt:ctl", note="fleet v4", now=now)
    assert rows.active_decisions() == {"c-home": GOOD}          # what a restarted agent enforces
    assert [(a["customer"], a["actor"], a["note"]) for a in adopted(store)] == [("c-home", "mqtt:ctl", "fleet v3")]
    audit = store.all("SELECT action, subject, actor, after FROM audit ORDER BY id")
    assert [(a["action"], a["subject"], a["actor"]) for a in audit][-2:] == [
        ("suspension.adopt", "fleet:suspension", "mqtt:ctl")] * 2


def test_the_controller_publishes_active_suspensions_scoped_by_nodes():
    class View:
        decisions = Decisions({("suspension", "c-home"): GOOD, ("suspension", "c-pinned"): {**GOOD, "id": 9},
                               ("consent:analysis", "c-home"): False})
        customers = {"c-pinned": type("C", (), {"nodes": ("edge-3",)})()}

    class Source:
        view = View()
    kind = DecisionKind("suspension", Source(), valid=check_fleet_value)
    assert asyncio.run(kind.current()) == {"fleet": {"c-home": GOOD}, "edge-3": {"c-pinned": {**GOOD, "id": 9}}}


def test_ends_an_agent_enforces_by_itself():
    now = dt.datetime(2026, 3, 2, 1, 0, tzinfo=dt.UTC)
    rows = [{"customer": "a", "end": "2026-03-02T01:00:00+00:00"},       # now: due
            {"customer": "b", "end": "2026-03-02T10:00:00+09:00"},       # 01:00 UTC too
            {"customer": "c", "end": "2026-03-02T02:00:00+00:00"},
            {"customer": "d", "end": None}]
    assert overdue(rows, now) == ["a", "b"]
    assert next_end(rows, now) == dt.datetime(2026, 3, 2, 2, 0, tzinfo=dt.UTC)
    assert next_end(rows[3:], now) is None


def test_a_terminated_restriction_stays_in_force_across_a_restart(store):
    """docs/suspension.md: the restriction stays after termination; a restarted controller must
    not lift it (nor publish the lift to its agents)."""
    rows = SuspensionStore(store)
    base = {"customer": "c-home", "cause": "nonpayment", "mode": "block", "reason": "unpaid",
            "start": GOOD["start"], "terminable_at": GOOD["start"], "created": GOOD["start"], "actor": "noc"}
    with store.transaction() as db:
        sid = rows.insert(db, {**base, "state": "terminated"})
        rows.insert(db, {**base, "customer": "c-two", "state": "ended"})
    assert list(rows.active_decisions()) == ["c-home"] and rows.active_decisions()["c-home"]["id"] == sid
