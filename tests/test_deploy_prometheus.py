"""deploy/prometheus: configs and rules pass promtool; the rule unit tests pass and cover
every alert, firing and quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO

PROM = REPO / "deploy" / "prometheus"
RULES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None,
                                reason="promtool not installed (Debian package prometheus; tests/run-all.sh)")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> dict[str, dict]:
    out = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in out, f"alert {rule['alert']} defined twice"
                    out[rule["alert"]] = rule
    return out


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.compose.yml"])
def test_configs_pass_promtool(config):
    res = promtool("check", "config", config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert f"{len(RULES)} rule files found" in res.stdout


def test_rules_pass_promtool():
    assert RULES
    res = promtool("check", "rules", *map(str, RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for p in RULES for g in yaml.safe_load(p.read_text())['groups'])} " \
           "rules found" in res.stdout


def test_rule_unit_tests_pass():
    assert RULE_TESTS
    res = promtool("test", "rules", *map(str, RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_rule_unit_tests_would_catch_a_wrong_threshold(tmp_path):
    """The unit tests are sensitive: the same tests against rules with one threshold
    changed (reload failing after 1m instead of 10m) must fail."""
    rules_dir = tmp_path / "rules"
    tests_dir = tmp_path / "tests"
    shutil.copytree(PROM / "rules", rules_dir)
    shutil.copytree(PROM / "tests", tests_dir)
    path = rules_dir / "nocpolicy.rules.yml"
    text = path.read_text()
    assert "expr: nocpolicy_policy_last_reload_failed == 1\n        for: 10m" in text
    path.write_text(text.replace("expr: nocpolicy_policy_last_reload_failed == 1\n        for: 10m",
                                 "expr: nocpolicy_policy_last_reload_failed == 1\n        for: 1m"))
    res = promtool("test", "rules", *[str(p) for p in sorted(tests_dir.glob("*.yml"))], cwd=tmp_path)
    assert res.returncode != 0 and "NocpolicyPolicyReloadFailing" in res.stdout + res.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert names - fired == set(), f"alerts never tested firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"


def test_every_alert_is_documented():
    ops = (REPO / "docs" / "operations.md").read_text()
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("page", "warning", "info"), name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        base = anchor.removesuffix("critical")
        assert f"### {base}" in ops.lower() or f"{{#{anchor}}}" in ops, \
            f"docs/operations.md has no section for {name} (runbook anchor #{anchor})"


AM = PROM / "alertmanager.yml"
needs_amtool = pytest.mark.skipif(shutil.which("amtool") is None,
                                  reason="amtool not installed (Debian package prometheus-alertmanager)")


def route(**labels: str) -> str:
    res = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={AM}",
                          *[f"{k}={v}" for k, v in labels.items()]], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@needs_amtool
def test_alertmanager_config_passes_amtool():
    res = subprocess.run(["amtool", "check-config", str(AM)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


@needs_amtool
def test_every_alert_routes_by_its_severity():
    receivers = {}
    for name, rule in alerts().items():
        receivers.setdefault(rule["labels"]["severity"], set()).add(route(alertname=name, instance="r1",
                                                                          **rule["labels"]))
    assert all(len(r) == 1 for r in receivers.values()), receivers
    got = {sev: next(iter(r)) for sev, r in receivers.items()}
    assert got == {"page": "oncall-pager", "warning": "noc-mail", "info": "noc-chat"}


def test_inhibit_rules_name_real_alerts():
    config = yaml.safe_load(AM.read_text())
    names = set(alerts())
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            key, op, value = re.match(r'(\w+)(=~|!=|=)"(.*)"', matcher).groups()
            if key == "alertname" and op == "=":
                assert value in names, f"inhibit rule names unknown alert {value}"
        assert "instance" in rule["equal"]
