"""The detect: policy section (file:line errors, defaults) and applying it on reload."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers import BIN, wait_for
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy


def test_defaults_and_full_section(policy_dir):
    p = load_policy(policy_dir)
    assert not p.detect.enabled and p.detect.enforce == ("events",)
    (policy_dir / "detect.yaml").write_text(textwrap.dedent("""\
        detect:
          dnstap: {socket: /run/nocpolicy/dnstap.sock}
          capture:
            - {interface: eth0}
          logfiles:
            - {path: /var/log/named/queries.log, format: bind}
          enforce: [rpz, nft]
          block_for: 6h
          rpz: {directory: /var/lib/unbound/nocpolicy, origin: RPZ.Example., views: none, ttl: 30}
          nft: {table: cc_blocks, hook: forward}
        """))
    d = load_policy(policy_dir).detect
    assert d.enabled and d.dnstap_socket == "/run/nocpolicy/dnstap.sock"
    assert d.captures[0].interface == "eth0" and d.captures[0].port == 53
    assert d.logfiles[0].format == "bind" and d.block_for == 6 * 3600
    assert (d.rpz.origin, d.rpz.views, d.rpz.ttl) == ("rpz.example", "none", 30)
    assert d.rpz.reload_zone == ("unbound-control", "auth_zone_reload", "{zone}")
    assert d.nft.table == "cc_blocks"


def test_errors_name_file_line_and_field(policy_dir):
    (policy_dir / "detect.yaml").write_text(textwrap.dedent("""\
        detect:
          dnstap: {}
          capture:
            - {interface: "eth0; rm -rf /", port: 70000}
          logfiles:
            - {path: /a, format: syslog}
          enforce: [rpz, block-everything]
          block_for: 0s
          rpz: {views: per-client, reload_zone: []}
          nft: {table: "bad-name!"}
          surprise: 1
        """))
    with pytest.raises(PolicyInvalid) as exc:
        load_policy(policy_dir)
    text = str(exc.value)
    for want in ("detect.yaml:2: detect.dnstap.socket: required key is missing",
                 "detect.yaml:4: detect.capture[0].interface:",
                 "detect.yaml:4: detect.capture[0].port: 70000 is out of range",
                 "detect.yaml:6: detect.logfiles[0].format: 'syslog' is not one of: unbound, bind",
                 "detect.yaml:7: detect.enforce[1]: 'block-everything' is not one of",
                 "detect.yaml:8: detect.block_for: must be at least 1s",
                 "detect.yaml:9: detect.rpz.views:",
                 "detect.yaml:9: detect.rpz.reload_zone: expected at least 1 item(s)",
                 "detect.yaml:10: detect.nft.table:",
                 "detect.yaml:11: detect.surprise: unknown key"):
        assert want in text, f"{want!r} not in:\n{text}"


def test_import_nocpolicy_does_not_import_scapy():
    code = ("import sys, nocpolicy.app, nocpolicy.detect.component, nocpolicy.detect.capture; "
            "print('scapy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reload_starts_inputs(policy_dir, daemon, tmp_path):
    d = daemon(policies=policy_dir)
    assert d.ctl_json("detect", "status")["state"] == "disabled"
    log = tmp_path / "queries.log"
    log.write_text("")
    (policy_dir / "detect.yaml").write_text(textwrap.dedent(f"""\
        detect:
          logfiles:
            - {{path: {log}, format: unbound}}
        """))
    res = d.ctl("reload")
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: d.ctl_json("detect", "status")["state"] == "running", 10, what="detect running")
    # the example policy's maltrail list: a C&C name for customer c1001 (192.0.2.0/26)
    name = next(line.split()[0] for line in (policy_dir / "lists" / "cc-maltrail.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#") and "/" not in line and ":" not in line)
    with open(log, "a") as f:
        f.write(f"[1764064800] unbound[1:0] info: 192.0.2.10 {name}. A IN\n")
    rows = wait_for(lambda: d.ctl_json("detections", "--customer", "c1001")["detections"], 10,
                    what="a logfile detection after reload")
    assert rows[0]["source"] == "logfile" and rows[0]["list"] == "cc-maltrail"
    out = subprocess.run([str(BIN / "nocpolicyctl"), "--admin", d.admin, "--state-dir", str(d.state_dir),
                          "detect", "status", "--blocks"], capture_output=True, text=True)
    assert out.returncode == 0 and f"{log} (unbound): 1 lines" in out.stdout
