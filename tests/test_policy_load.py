"""Loading, versioning and diffing policies; `nocpolicyctl check` offline."""

from __future__ import annotations

import json
import shutil
import subprocess

from helpers import BIN, REPO
from nocpolicy.policy.diff import diff_policies
from nocpolicy.policy.load import load_policy


def check(directory) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nocpolicyctl"), "check", str(directory)], capture_output=True, text=True,
                          timeout=60)


def test_check_good_directory_exits_0():
    res = check(REPO / "policies")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK, version" in res.stdout and "5 customers" in res.stdout


def test_check_bad_directory_prints_every_problem_and_exits_1(policy_dir):
    (policy_dir / "zz.yaml").write_text("plans:\n  - id: p9\n    down: fast\n    color: red\n"
                                        "customers:\n  - id: c1001\n    name: dup\n")
    (policy_dir / "syntax.yaml").write_text("dns: [\n")
    res = check(policy_dir)
    assert res.returncode == 1
    assert res.stdout.replace(f"{policy_dir}/", "policies/").splitlines() == [
        "policies/syntax.yaml:2: (top): YAML syntax error: expected the node content, but found "
        "'<stream end>' (while parsing a flow node)",
        "policies/zz.yaml:3: plans[0].down: 'fast' is not a rate (examples: 800kbit, 50mbit, 1gbit)",
        "policies/zz.yaml:4: plans[0].color: unknown key (expected one of: down, emergency_down, id, name, up)",
        "policies/zz.yaml:6: customers[id=c1001]: duplicate id 'c1001' (first defined at policies/customers.yaml:19)",
    ]
    assert "4 problem(s)" in res.stderr
    res = subprocess.run([str(BIN / "nocpolicyctl"), "check", str(policy_dir), "--json"], capture_output=True,
                         text=True, timeout=60)
    out = json.loads(res.stdout)
    assert res.returncode == 1 and out["ok"] is False and len(out["problems"]) == 4
    assert out["problems"][1] == {"file": f"{policy_dir}/zz.yaml", "line": 3, "path": "plans[0].down",
                                  "reason": "'fast' is not a rate (examples: 800kbit, 50mbit, 1gbit)"}


def test_check_missing_directory_exits_1(tmp_path):
    res = check(tmp_path / "nope")
    assert res.returncode == 1 and "does not exist" in res.stdout


def test_version_is_a_content_hash(tmp_path, policy_dir):
    a = load_policy(policy_dir)
    other = shutil.copytree(policy_dir, tmp_path / "elsewhere" / "policies")
    assert load_policy(other).version == a.version          # same content, same version
    (policy_dir / "lists" / "cc-maltrail.txt").write_text("evil.example\n")
    b = load_policy(policy_dir)
    assert b.version != a.version                            # list files are part of the policy
    change = diff_policies(a, b)
    assert change.describe() == "dns.lists ~cc-maltrail"
    assert change.touches("dns.lists") and not change.touches("customers")


def test_diff_names_what_changed(policy_dir):
    a = load_policy(policy_dir)
    text = (policy_dir / "customers.yaml").read_text()
    text = text.replace("down: 100mbit", "down: 120mbit").replace("security_optout: true", "security_optout: false")
    text += "  - id: c9001\n    name: New\n    prefixes: [203.0.113.16/28]\n"
    (policy_dir / "customers.yaml").write_text(text)
    (policy_dir / "settings.yaml").write_text((policy_dir / "settings.yaml").read_text()
                                              .replace("provider: ", "provider: New "))
    b = load_policy(policy_dir)
    change = diff_policies(a, b)
    assert change.sections["customers"].added == ("c9001",)
    assert change.sections["customers"].changed == ("c1003",)
    assert change.sections["plans"].changed == ("home-100m",)
    assert change.describe() == "customers +c9001 ~c1003; plans ~home-100m; settings changed"
    assert diff_policies(None, b).initial and diff_policies(None, b).touches("anything")
    assert diff_policies(b, b).describe() == "no effective change"
    # Moving things around (new lines, comments) changes the version, not the content.
    (policy_dir / "customers.yaml").write_text("# moved\n\n\n" + text)
    (policy_dir / "emergency.yaml").write_text("\n\n" + (policy_dir / "emergency.yaml").read_text())
    c = load_policy(policy_dir)
    assert c.version != b.version and diff_policies(b, c).describe() == "no effective change"


def test_customer_for_is_longest_prefix_match(policy_dir):
    p = load_policy(policy_dir)
    assert p.customer_for("192.0.2.70").id == "c1002"
    assert p.customer_for("2001:db8:2001::1").id == "c2001"
    assert p.customer_for("10.1.1.1") is None


def test_durations_rates_and_percentages(policy_dir):
    p = load_policy(policy_dir)
    prof = p.profiles_by_id["earthquake"]
    assert prof.priority_share == 0.4 and prof.ordinary_floor == 0.2
    assert prof.customer_cap == 10_000_000 and prof.max_duration == 72 * 3600
    assert p.plans_by_id["biz-1g"].down == 1_000_000_000
    assert p.dns.upstreams[0].timeout == 1.5 and p.dns.detection_retention == 30 * 86400
