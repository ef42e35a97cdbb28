"""Pure parts of qos: plan building, nft/tc rendering (golden files), JSON round trip, tc parsing.

Regenerate the golden files after an intended change with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from nocpolicy.errors import EnforcementError
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.kernel import htb_default, parse_classes, parse_qdiscs, rate_close
from nocpolicy.qos.plan import DEFAULT, LINK, NETCTL, ORDINARY, PRIORITY, Emergency, build_plan
from nocpolicy.qos.render import diff_lines, render_nft, render_tc
from nocpolicy.qos.serial import plan_from_json, plan_to_json

GOLDEN = Path(__file__).parent / "golden" / "qos"


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(GOLDEN / "policy"))


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path} (run with UPDATE_GOLDEN=1)"
    assert text == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 if intended)"


def test_golden_normal(policy):
    plan = build_plan(policy)
    golden("normal.nft", render_nft(plan))
    golden("tree.tc", render_tc(plan))


def test_golden_emergency(policy):
    plan = build_plan(policy, Emergency("quake", ("down0",), "test"))
    golden("emergency.nft", render_nft(plan))
    assert render_tc(plan) == render_tc(build_plan(policy)), "an emergency must not change the tc tree"


def test_tree_shares_and_caps(policy):
    plan = build_plan(policy)
    t = {c.minor: c for c in plan.interfaces[0].classes}
    assert t[LINK].rate == t[LINK].ceil == 50_000_000
    assert t[NETCTL].rate == 2_500_000 and t[NETCTL].prio == 0          # 5% of the link, served first
    assert t[PRIORITY].rate == 30_000_000                                # priority_share 60%
    assert t[ORDINARY].rate == 17_500_000 >= 0.2 * 50_000_000            # the rest, above the floor
    assert t[DEFAULT].parent == ORDINARY
    caps = {c.name: c for c in plan.interfaces[0].classes if ":" in c.name}
    assert caps["cap:c1"].ceil == 5_000_000
    assert caps["ecap:c1"].ceil == 2_000_000       # plan emergency_down (2M) below the profile cap (10M)
    assert caps["ecap:c2"].ceil == 10_000_000      # profile cap (10M) below the plan's 20M
    assert "cap:c2" not in caps                    # 1gbit >= every link: no class needed
    assert all(c.parent in (0, LINK, ORDINARY) for c in plan.interfaces[0].classes)


def test_floor_wins_over_share(policy):
    p = dataclasses.replace(policy.profiles[0], priority_share=0.8, ordinary_floor=0.2)
    pol = dataclasses.replace(policy, profiles=(p,))
    t = {c.minor: c for c in build_plan(pol).interfaces[0].classes}
    assert t[ORDINARY].rate >= 10_000_000
    assert t[NETCTL].rate + t[PRIORITY].rate + t[ORDINARY].rate <= 50_000_000


def test_emergency_content(policy):
    plan = build_plan(policy, Emergency("quake"))
    em = plan.emergency
    assert em.scope == ("down0", "down1")
    prio = {e.prefix: e.note for e in em.priority}
    assert prio["203.0.113.128/25"] == "city disaster portal (annex 3)"
    assert "198.51.100.128/26" in prio                       # designated + public_safety customer
    assert em.dscp_values == (46,) and [e.prefix for e in em.dscp_sources] == ["198.51.100.0/25"]
    normal = {e.prefix: e.minor for e in plan.caps}
    emerg = {e.prefix: e.minor for e in em.caps}
    assert normal["192.0.2.0/26"] != emerg["192.0.2.0/26"]
    assert "192.0.2.64/26" not in normal and "192.0.2.64/26" in emerg


def test_unknown_profile_and_scope(policy):
    with pytest.raises(ValueError, match="unknown emergency profile 'nope'"):
        build_plan(policy, Emergency("nope"))
    with pytest.raises(ValueError, match="eth9"):
        build_plan(policy, Emergency("quake", ("eth9",)))


def test_diff_lines(policy):
    added, removed = diff_lines(build_plan(policy), build_plan(policy, Emergency("quake")))
    assert removed == []
    assert "nft priority 203.0.113.128/25 (city disaster portal (annex 3))" in added
    assert not any(line.startswith("tc ") for line in added)
    back_added, back_removed = diff_lines(build_plan(policy, Emergency("quake")), build_plan(policy))
    assert back_added == [] and sorted(back_removed) == sorted(added)


def test_json_round_trip(policy):
    for em in (None, Emergency("quake", ("down1",))):
        plan = build_plan(policy, em)
        assert plan_from_json(plan_to_json(plan)) == plan
    golden("plan.json", __import__("json").dumps(plan_to_json(build_plan(policy, Emergency("quake"))), indent=1,
                                                 ensure_ascii=False) + "\n")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(format="v0"), "format"),
    (lambda d: d.update(leaf="cake"), "leaf"),
    (lambda d: d["interfaces"][0].update(name="a b"), "interfaces[0].name"),
    (lambda d: d["interfaces"][0]["classes"][0].__setitem__(3, -1), "interfaces[0].classes[0]"),
    (lambda d: d["caps"][0].__setitem__(0, "300.1.2.0/24"), "caps[0]"),
    (lambda d: d["emergency"]["dscp_values"].append(99), "emergency.dscp_values"),
])
def test_json_rejects_bad_plans(policy, mutate, field):
    data = plan_to_json(build_plan(policy, Emergency("quake")))
    mutate(data)
    with pytest.raises(EnforcementError, match=field.replace("[", r"\[").replace("]", r"\]")):
        plan_from_json(data)


TC_CLASSES = """\
class htb 1:101 parent 1:30 leaf 101: prio 2 rate 10Mbit ceil 10Mbit burst 1600b cburst 1600b
 Sent 1234 bytes 5 pkt (dropped 1, overlimits 7 requeues 0)
 backlog 0b 0p requeues 0
class htb 1:1 root rate 1Gbit ceil 1Gbit burst 1375b cburst 1375b
class htb 1:30 parent 1:1 rate 550Mbit ceil 1Gbit burst 1512b cburst 1375b
class htb 1:100 parent 1:30 leaf 100: prio 2 rate 39285Kbit ceil 100Mbit burst 1591b cburst 1600b
"""


def test_parse_tc():
    c = parse_classes(TC_CLASSES)
    assert c[0x1].parent is None and c[0x30].parent == 0x1 and c[0x101].parent == 0x30
    assert (c[0x101].bytes, c[0x101].packets, c[0x101].drops, c[0x101].overlimits) == (1234, 5, 1, 7)
    assert c[0x101].leaf == 0x101 and c[0x30].leaf is None
    assert rate_close(c[0x100].rate, 39_285_714) and c[0x100].ceil == 100_000_000
    q = parse_qdiscs("qdisc htb 1: root refcnt 3 r2q 10 default 0x31 direct_packets_stat 0\n"
                     "qdisc pfifo 31: parent 1:31 limit 1000p\n")
    assert htb_default(q) == 0x31 and q[1].parent == 0x31 and q[1].kind == "pfifo"
    assert htb_default(parse_qdiscs("qdisc noqueue 0: root refcnt 2\n")) is None
