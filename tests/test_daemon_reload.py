"""Reload while running: a real nocpolicyd process, real HTTP, real signals and files."""

from __future__ import annotations

import re
import signal

from helpers import wait_for

NEW_CUSTOMER = """
  - id: c9001
    name: "Reload Test KK"
    prefixes: [203.0.113.16/28]
    plan: home-100m
"""


def version(d) -> str:
    return d.ctl_json("status")["policy"]["version"]


def add_customer(policy_dir) -> None:
    with open(policy_dir / "customers.yaml", "a", encoding="utf-8") as f:
        f.write(NEW_CUSTOMER)


def break_policy(policy_dir) -> int:
    """Append a customer with a bad prefix; returns the line of the bad value."""
    text = (policy_dir / "customers.yaml").read_text(encoding="utf-8")
    lines = text.count("\n")
    (policy_dir / "customers.yaml").write_text(
        text + "  - id: c9002\n    name: Broken\n    prefixes: [10.0.0.1/8]\n", encoding="utf-8")
    return lines + 3


def test_good_reload_via_ctl_swaps_policy(daemon, policy_dir):
    d = daemon(policies=policy_dir, extra_args=["--no-watch"])
    v1 = version(d)
    assert d.metric("nocpolicy_policy_info", {"version": v1}) == 1
    assert d.metric("nocpolicy_policy_reloads_total", {"result": "success"}) == 1
    add_customer(policy_dir)
    res = d.ctl("reload", check=True)
    v2 = version(d)
    assert v2 != v1
    assert res.stdout.strip() == f"policy {v1} -> {v2}: customers +c9001"
    status = d.ctl_json("status")
    assert status["policy"]["customers"] == 6
    assert status["last_error"] is None and status["last_reload"]["source"] == "nocpolicyctl"
    assert d.metric("nocpolicy_policy_info", {"version": v2}) == 1
    assert d.metric("nocpolicy_policy_info", {"version": v1}) is None
    assert d.metric("nocpolicy_policy_reloads_total", {"result": "success"}) == 2
    assert f"policy {v1} -> {v2} (nocpolicyctl): customers +c9001" in d.log()
    audit = d.ctl_json("audit", "--subject", "policy")["audit"]
    assert audit[0]["action"] == "policy.reload" and audit[0]["actor"] == "admin"
    assert audit[0]["before"] == {"version": v1} and audit[0]["after"]["version"] == v2
    assert audit[1]["action"] == "policy.load" and audit[1]["after"]["version"] == v1
    assert audit[1]["after"]["source"] == "start"
    # Reloading again without edits changes nothing.
    assert d.ctl("reload", check=True).stdout.strip() == f"policy {v2} unchanged"
    assert d.ctl_json("status")["last_reload"]["summary"] == "customers +c9001"   # the last real change


def test_bad_reload_is_refused_and_old_policy_keeps_serving(daemon, policy_dir):
    d = daemon(policies=policy_dir, extra_args=["--no-watch"])
    v1 = version(d)
    line = break_policy(policy_dir)
    res = d.ctl("reload")
    assert res.returncode == 1
    expected = (f"{policy_dir}/customers.yaml:{line}: customers[5].prefixes[0]: "
                "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)")
    assert res.stdout.splitlines() == [expected]
    assert f"still serving policy {v1}" in res.stderr
    status = d.ctl_json("status")
    assert status["policy"]["version"] == v1
    assert status["last_error"]["errors"] == [expected]
    assert status["last_reload"]["ok"] is False
    human = d.ctl("status", check=True).stdout
    assert "last reload REFUSED" in human and expected in human
    assert d.metric("nocpolicy_policy_reloads_total", {"result": "failure"}) == 1
    assert d.metric("nocpolicy_policy_last_reload_failed") == 1
    assert d.metric("nocpolicy_policy_info", {"version": v1}) == 1
    assert f"reload refused: {expected}" in d.log()
    # Still serving: the admin API and readiness answer.
    assert d.ctl("status").returncode == 0
    # Putting the file back clears the error (the running policy is good again).
    text = (policy_dir / "customers.yaml").read_text(encoding="utf-8")
    (policy_dir / "customers.yaml").write_text(text.split("  - id: c9002")[0], encoding="utf-8")
    assert d.ctl("reload", check=True).stdout.strip() == f"policy {v1} unchanged"
    assert d.ctl_json("status")["last_error"] is None
    assert d.metric("nocpolicy_policy_last_reload_failed") == 0


def test_sighup_reloads(daemon, policy_dir):
    d = daemon(policies=policy_dir, extra_args=["--no-watch"])
    v1 = version(d)
    add_customer(policy_dir)
    d.signal(signal.SIGHUP)
    v2 = wait_for(lambda: (v := version(d)) != v1 and v, timeout=10, what="SIGHUP reload")
    assert f"policy {v1} -> {v2} (SIGHUP): customers +c9001" in d.log()
    break_policy(policy_dir)
    d.signal(signal.SIGHUP)
    wait_for(lambda: d.metric("nocpolicy_policy_reloads_total", {"result": "failure"}) == 1,
             timeout=10, what="refused SIGHUP reload")
    assert version(d) == v2
    assert d.ctl_json("status")["last_error"]["source"] == "SIGHUP"


def test_saving_a_file_reloads_debounced(daemon, policy_dir):
    d = daemon(policies=policy_dir)
    v1 = version(d)
    add_customer(policy_dir)
    v2 = wait_for(lambda: (v := version(d)) != v1 and v, timeout=15, what="file-change reload")
    assert f"policy {v1} -> {v2} (file change): customers +c9001" in d.log()
    # Several quick saves make one reload, not one per save.
    successes = d.metric("nocpolicy_policy_reloads_total", {"result": "success"})
    plans = policy_dir / "customers.yaml"
    for rate in ("101mbit", "102mbit", "103mbit"):
        plans.write_text(re.sub(r"down: 10[0-3]mbit", f"down: {rate}", plans.read_text(encoding="utf-8"), count=1),
                         encoding="utf-8")
    wait_for(lambda: "plans ~home-100m" in d.log(), timeout=15, what="plan change reload")
    assert d.metric("nocpolicy_policy_reloads_total", {"result": "success"}) == successes + 1
    # A list file is part of the policy: editing it reloads and names the list.
    with open(policy_dir / "lists" / "mandatory.txt", "a", encoding="utf-8") as f:
        f.write("another-placeholder.invalid\n")
    wait_for(lambda: "dns.lists ~csam-mandatory" in d.log(), timeout=15, what="list file reload")
    # A broken save is refused and shows in metrics.
    break_policy(policy_dir)
    wait_for(lambda: d.metric("nocpolicy_policy_last_reload_failed") == 1, timeout=15, what="refused save")
    assert d.ctl_json("status")["last_error"]["source"] == "file change"


def test_dry_run_prints_diff_and_changes_nothing(daemon, policy_dir):
    d = daemon(policies=policy_dir, extra_args=["--no-watch"])
    v1 = version(d)
    add_customer(policy_dir)
    res = d.ctl("reload", "--dry-run", check=True)
    out = res.stdout.splitlines()
    assert re.fullmatch(r"dry run: policy [0-9a-f]{12}: customers \+c9001", out[0]), out
    assert version(d) == v1
    assert d.metric("nocpolicy_policy_reloads_total", {"result": "success"}) == 1
    as_json = d.ctl_json("reload", "--dry-run")
    assert as_json["dry_run"] is True and as_json["change"]["sections"]["customers"]["added"] == ["c9001"]
    # A dry run of a broken policy reports the errors too, and still changes nothing.
    break_policy(policy_dir)
    bad = d.ctl("reload", "--dry-run")
    assert bad.returncode == 1 and "has host bits set" in bad.stdout
    assert version(d) == v1
