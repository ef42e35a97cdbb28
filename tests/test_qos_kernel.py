"""The Linux backend against the real kernel, in a namespace the test creates: apply, verify, rollback."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import need_root_netns
from helpers import netns_with_veths, sh
from nocpolicy.errors import EnforcementError
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.apply import LinuxBackend
from nocpolicy.qos.kernel import parse_classes
from nocpolicy.qos.plan import Emergency, build_plan
from test_qos_render import GOLDEN

pytestmark = pytest.mark.skipif(need_root_netns() is not None, reason=need_root_netns() or "")


@pytest.fixture
def ns():
    """A namespace with the golden policy's interfaces (veth down0, down1)."""
    with netns_with_veths("nocpt", [("down0", "peer0"), ("down1", "peer1")]) as name:
        yield name


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(GOLDEN / "policy"))


def kernel(ns: str) -> tuple[str, str, str]:
    nft = sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "nocpolicy")
    tc = "".join(sh("ip", "netns", "exec", ns, "tc", "class", "show", "dev", d) for d in ("down0", "down1"))
    qd = "".join(sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", d) for d in ("down0", "down1"))
    return nft, "\n".join(sorted(tc.splitlines())), "\n".join(sorted(qd.splitlines()))


def test_apply_verify_and_emergency_touches_nft_only(ns, policy):
    b = LinuxBackend(ns)
    r = b.apply(build_plan(policy))
    assert r.tc_commands > 0 and r.emergency is None
    classes = parse_classes(sh("ip", "netns", "exec", ns, "tc", "class", "show", "dev", "down0"))
    assert {m for m, k in classes.items() if k.parent is None} == {0x1}
    nft0, tc0, _ = kernel(ns)
    r = b.apply(build_plan(policy, Emergency("quake", ("down0",))))
    assert r.tc_commands == 0 and r.emergency == "quake"
    nft1, tc1, _ = kernel(ns)
    assert tc1 == tc0 and nft1 != nft0
    assert '"down0"' in sh("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "nocpolicy", "emergency_ifs")
    assert "203.0.113.128/25" in nft1
    # a second backend (a restarted daemon) finds the tree in place: no tc change at all
    r = LinuxBackend(ns).apply(build_plan(policy))
    assert r.tc_commands == 0
    assert kernel(ns)[0] == nft0


def test_failed_tc_line_rolls_back(ns, policy):
    b = LinuxBackend(ns)
    good = build_plan(policy)
    b.apply(good)
    before = kernel(ns)
    bigger = dataclasses.replace(policy.interfaces[0], rate=80_000_000)
    bad = dataclasses.replace(build_plan(dataclasses.replace(policy, interfaces=(bigger, policy.interfaces[1]))),
                              leaf="nosuchqdisc")
    with pytest.raises(EnforcementError) as exc:
        b.apply(bad)
    assert "tc -batch line" in str(exc.value) and "rolled back" in str(exc.value)
    assert kernel(ns) == before, "the kernel must still hold the previous rules"


def test_failed_nft_rolls_back_tc(ns, policy):
    b = LinuxBackend(ns)
    b.apply(build_plan(policy, Emergency("quake")))
    before = kernel(ns)
    bigger = dataclasses.replace(policy.interfaces[0], rate=80_000_000)
    plan = build_plan(dataclasses.replace(policy, interfaces=(bigger, policy.interfaces[1])), Emergency("quake"))
    bad = dataclasses.replace(plan, emergency=dataclasses.replace(plan.emergency, dscp_values=(99,)))
    with pytest.raises(EnforcementError) as exc:
        b.apply(bad)
    msg = str(exc.value)
    assert "nft -f" in msg and "line " in msg and "tc rolled back" in msg
    assert kernel(ns) == before
    assert b.apply(build_plan(policy)).ok     # and the backend still works afterwards


def test_missing_interface_changes_nothing(ns, policy):
    b = LinuxBackend(ns)
    b.apply(build_plan(policy))
    before = kernel(ns)
    gone = dataclasses.replace(policy.interfaces[1], name="down7")
    with pytest.raises(EnforcementError, match="down7 do not exist in network namespace"):
        b.apply(build_plan(dataclasses.replace(policy, interfaces=(policy.interfaces[0], gone))))
    assert kernel(ns) == before


def test_htb_trap_repaired(ns, policy):
    LinuxBackend(ns).apply(build_plan(policy))
    ex = ("ip", "netns", "exec", ns, "tc")
    sh(*ex, "class", "del", "dev", "down0", "classid", "1:31")
    sh(*ex, "class", "add", "dev", "down0", "parent", "1:", "classid", "1:31", "htb", "rate", "1mbit")
    assert parse_classes(sh(*ex, "class", "show", "dev", "down0"))[0x31].parent is None   # escaped: a root class
    r = LinuxBackend(ns).apply(build_plan(policy))
    assert r.tc_commands >= 2
    k = parse_classes(sh(*ex, "class", "show", "dev", "down0"))
    assert k[0x31].parent == 0x30
    assert "pfifo 31:" in sh(*ex, "qdisc", "show", "dev", "down0")


def test_leaf_queue_length_is_corrected(ns, policy):
    LinuxBackend(ns).apply(build_plan(policy))
    ex = ("ip", "netns", "exec", ns, "tc")
    sh(*ex, "qdisc", "replace", "dev", "down0", "parent", "1:31", "handle", "31:", "pfifo", "limit", "5000")
    r = LinuxBackend(ns).apply(build_plan(policy))
    assert r.tc_commands == 1
    assert "qdisc pfifo 31: parent 1:31 limit 206p" in sh(*ex, "qdisc", "show", "dev", "down0")
