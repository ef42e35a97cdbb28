"""The qos component in a real nocpolicyd: plan-only mode, commands, audit, expiry, stop/start, reload."""

from __future__ import annotations

import datetime as dt

import yaml

from helpers import sh, wait_for


def test_plan_only_when_interfaces_are_missing(daemon):
    """The embedded default: nocp-down0 does not exist, so nothing is enforced, but everything else works."""
    d = daemon(extra_args=["--enforce", "auto"])
    st = d.ctl_json("status")["components"]["qos"]
    assert st["state"] == "disabled" and "nothing is enforced" in st["detail"] and "nocp-down0" in st["detail"]
    assert d.metric("nocpolicy_component_up", {"component": "qos"}) == 1.0
    assert d.metric("nocpolicy_enforcement_enforcing") == 0.0

    dry = d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "drill", "--dry-run", check=True)
    assert "dry run" in dry.stdout and "+ nft priority 203.0.113.128/25" in dry.stdout
    assert d.ctl_json("emergency", "status")["active"] is None        # a dry run changes nothing

    out = d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "M7 quake", check=True).stdout
    assert "plan-only: nothing is enforced" in out and "+ nft priority 198.51.100.128/26 (customer c2001)" in out
    st = d.ctl_json("emergency", "status")
    assert st["active"]["profile"] == "earthquake" and st["active"]["declared_by"] == "admin"
    assert st["enforced"] is False
    # ends at declared + max_duration (72h) when no --until is given
    declared = dt.datetime.fromisoformat(st["active"]["declared_at"])
    assert dt.datetime.fromisoformat(st["active"]["ends_at"]) - declared == dt.timedelta(hours=72)
    assert d.metric("nocpolicy_emergency_active", {"profile": "earthquake"}) == 1.0

    again = d.ctl("emergency", "lift", "--reason", "drill over", check=True)
    assert "lifted" in again.stdout and "- nft priority 203.0.113.128/25" in again.stdout
    assert d.ctl("emergency", "lift").returncode == 1               # nothing left to lift
    assert d.metric("nocpolicy_emergency_active", {"profile": "earthquake"}) == 0.0
    audit = d.ctl_json("audit", "--subject", "emergency:earthquake")["audit"]
    assert [a["action"] for a in audit] == ["emergency.lift", "emergency.declare"]
    assert audit[1]["after"]["reason"] == "M7 quake" and audit[1]["after"]["enforced"] is False
    assert any("203.0.113.128/25" in r for r in audit[1]["after"]["rules_added"])
    assert any("203.0.113.128/25" in r for r in audit[0]["after"]["rules_removed"])


def test_bad_arguments_are_refused_by_field(daemon):
    d = daemon()
    r = d.ctl("emergency", "declare", "--profile", "volcano", "--reason", "x")
    assert r.returncode == 1 and "unknown emergency profile 'volcano'" in r.stderr
    r = d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "x", "--scope", "eth9")
    assert r.returncode == 1 and "eth9" in r.stderr
    r = d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "x", "--until", "2001-01-01T00:00")
    assert r.returncode == 1 and "in the past" in r.stderr
    r = d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "x", "--until", "tomorrow")
    assert r.returncode == 1 and "until" in r.stderr
    assert d.ctl_json("emergency", "status")["active"] is None


def test_until_expires_and_survives_restart(daemon, tmp_path):
    d = daemon()
    # 6 s: nocpolicyctl itself can take seconds to start on a busy machine, and an `until`
    # already past when the command arrives is (rightly) refused
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=6)).isoformat()
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "short", "--until", until, check=True)
    wait_for(lambda: d.ctl_json("emergency", "status")["active"] is None, 40, what="auto-expiry")
    audit = d.ctl_json("audit", "--subject", "emergency:earthquake")["audit"]
    assert audit[0]["action"] == "emergency.expire" and audit[0]["actor"] == "daemon"
    # an emergency declared before a restart is still active after it (the store keeps it)
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "long", check=True)
    assert d.stop() == 0
    d = daemon(policies=d.policies)          # same state directory, fresh ports
    assert d.ctl_json("emergency", "status")["active"]["reason"] == "long"


def test_enforce_linux_fails_loudly_without_interfaces(tmp_path):
    from helpers import DaemonProcess
    d = DaemonProcess(tmp_path, extra_args=["--enforce", "linux"])
    d.start(wait=False)
    try:
        assert d.proc.wait(20) != 0
    finally:
        d.kill()
    assert "--enforce linux" in d.log() and "nocp-down0" in d.log()


def test_reload_dry_run_prints_the_rule_diff(daemon):
    # No file watcher: on a busy machine it reloaded the edited file before the second
    # dry run, which then (rightly) had nothing left to show.
    d = daemon(extra_args=["--no-watch"])
    em = d.policies / "emergency.yaml"
    data = yaml.safe_load(em.read_text())
    data["emergency_profiles"][0]["priority"]["destinations"].append(
        {"prefix": "203.0.113.64/27", "note": "water utility (annex 4)"})
    em.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = d.ctl("reload", "--dry-run", check=True).stdout
    assert "--- qos\nno rule changes" in out     # destinations only matter during an emergency
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "x", check=True)
    out = d.ctl("reload", "--dry-run", check=True).stdout
    assert "+ nft priority 203.0.113.64/27 (water utility (annex 4))" in out


# -- stop / start on the real kernel -----------------------------------------------------


def emergency_ifs(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "nft", "list", "set", "inet", "nocpolicy", "emergency_ifs")


def classes(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "tc", "class", "show", "dev", "nocp-down0")


def test_stop_keeps_caps_drops_emergency_start_restores(daemon, router):
    d = daemon(extra_args=["--enforce", "linux", "--netns", router, "--customer-metrics"])
    assert d.ctl_json("status")["components"]["qos"]["state"] == "running"
    tree = classes(router)
    assert "class htb 1:31 parent 1:30" in tree
    assert d.metric("nocpolicy_enforcement_enforcing") == 1.0
    d.ctl_json("usage")                                      # reads the kernel counters now
    assert d.metric("nocpolicy_customer_bytes_total", {"customer": "c1001"}) == 0.0   # opt-in series
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "restart test", check=True)
    assert '"nocp-down0"' in emergency_ifs(router)
    assert d.stop() == 0
    # stopped: no emergency in the kernel (nobody could expire it), normal caps untouched
    assert '"nocp-down0"' not in emergency_ifs(router)
    assert classes(router) == tree
    assert "192.0.2.0/26" in sh("ip", "netns", "exec", router, "nft", "list", "map", "inet", "nocpolicy", "caps4")
    d = daemon(policies=d.policies, extra_args=["--enforce", "linux", "--netns", router])
    assert '"nocp-down0"' in emergency_ifs(router)           # re-applied from the store
    assert d.ctl_json("emergency", "status")["last_apply"]["tc_commands"] == 0   # no gap: tree kept as is
    d.ctl("emergency", "lift", check=True)
    assert '"nocp-down0"' not in emergency_ifs(router)


def test_expired_emergency_is_not_reapplied(daemon, router):
    d = daemon(extra_args=["--enforce", "linux", "--netns", router])
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).isoformat()
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "brief", "--until", until, check=True)
    d.stop()
    wait_for(lambda: dt.datetime.now(dt.UTC) > dt.datetime.fromisoformat(until), 10, what="until to pass")
    d = daemon(policies=d.policies, extra_args=["--enforce", "linux", "--netns", router])
    assert d.ctl_json("emergency", "status")["active"] is None
    assert '"nocp-down0"' not in emergency_ifs(router)
    audit = d.ctl_json("audit", "--subject", "emergency:earthquake")["audit"]
    assert audit[0]["action"] == "emergency.expire"


def test_counters_survive_resets():
    from nocpolicy.qos.component import _accumulate
    acc, last = {}, {}
    _accumulate(acc, last, {("eth0", "default"): [100, 2, 0]})
    _accumulate(acc, last, {("eth0", "default"): [150, 3, 1]})
    _accumulate(acc, last, {("eth0", "default"): [20, 1, 0]})      # rules replaced: the kernel counter restarted
    assert acc[("eth0", "default")] == [170, 4, 1]


def test_lift_restores_exactly_the_normal_rules(daemon, router):
    """Lifting leaves the kernel as it was before the declaration: same nft table, same tc tree."""
    d = daemon(extra_args=["--enforce", "linux", "--netns", router])
    table = lambda: sh("ip", "netns", "exec", router, "nft", "-s", "list", "table", "inet", "nocpolicy")  # noqa: E731
    normal_table, normal_tree = table(), classes(router)
    d.ctl("emergency", "declare", "--profile", "earthquake", "--reason", "drill", check=True)
    assert table() != normal_table
    d.ctl("emergency", "lift", "--reason", "drill over", check=True)
    assert table() == normal_table
    assert classes(router) == normal_tree
