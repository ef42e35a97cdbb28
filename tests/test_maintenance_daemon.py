"""A real nocpolicyd: the maintenance CLI, and SIGKILL in the middle of a notice batch."""

from __future__ import annotations

import collections
import datetime as dt
from zoneinfo import ZoneInfo

from helpers import DaemonProcess, copy_policies, wait_for
from test_maintenance_smtp import SmtpSink, smtp_yaml

JST = ZoneInfo("Asia/Tokyo")


def day(offset: int, hour: int = 1) -> str:
    d = dt.datetime.now(JST).date() + dt.timedelta(days=offset)
    return f"{d.isoformat()}T{hour:02d}:00"


def add_args(wid: str, offset: int, *extra: str) -> list[str]:
    return ["maintenance", "add", "--id", wid, "--kind", "planned", "--start", day(offset, 1),
            "--end", day(offset, 5), "--reason-ja", "光ファイバ収容替え", "--reason-en", "fibre re-termination",
            *extra]


def test_cli_without_smtp_keeps_notices_in_the_outbox(tmp_path, daemon):
    d = daemon()
    res = d.ctl(*add_args("mw-cli", 30, "--tags", "tokyo-east"))
    assert res.returncode == 0, res.stderr
    assert "notice by" in res.stdout and "2 notice(s) queued" in res.stdout and "outbox" in res.stdout
    # the deadline passed: refused, with the computed last day
    late = d.ctl(*add_args("mw-late", 10, "--customers", "c1001"))
    last_day = (dt.datetime.now(JST).date() + dt.timedelta(days=10 - 15)).isoformat()
    assert late.returncode == 1 and f"notice by {last_day}" in late.stderr
    urgent = d.ctl(*add_args("mw-late", 10, "--customers", "c1001", "--urgent"))
    assert urgent.returncode == 1 and "justification" in urgent.stderr
    ok = d.ctl(*add_args("mw-late", 10, "--customers", "c1001", "--urgent", "--justification", "PSIRT advisory"))
    assert ok.returncode == 0, ok.stderr
    assert "overlaps" not in ok.stdout

    listing = d.ctl("maintenance", "list", check=True).stdout
    assert "mw-cli" in listing and "mw-late" in listing and "URGENT" in listing
    show = d.ctl_json("maintenance", "show", "mw-cli")
    assert show["customers"] == ["c1001", "c1002"] and show["window"]["state"] == "notified"
    out = d.ctl("notices", check=True).stdout
    assert "SMTP is not configured" in out and "pending 3" in out
    assert d.metric("nocpolicy_notices_pending") == 3
    assert d.metric("nocpolicy_maintenance_windows", {"kind": "planned", "state": "notified"}) == 2

    assert d.ctl("contact", "set", "c1001", "--email", "new@yamada.example", "--reason", "moved").returncode == 0
    hist = d.ctl("contact", "show", "c1001", check=True).stdout.splitlines()
    assert hist[0].lstrip().startswith("v1") and "fault@yamada.example" in hist[0]
    assert hist[1].startswith("* v2") and "new@yamada.example" in hist[1]
    audit = d.ctl_json("audit", "--subject", "customer:c1001")["audit"]
    assert audit[0]["action"] == "contact.set"

    # nothing is lost across a restart
    assert d.stop() == 0
    d2 = daemon(policies=d.policies)
    assert d2.metric("nocpolicy_notices_pending") == 3
    rows = d2.ctl_json("notices", "--window", "mw-late")["notices"]
    assert [(r["recipient"], r["contact_version"]) for r in rows] == [("new@yamada.example", 2)]
    cancel = d2.ctl("maintenance", "cancel", "mw-cli", "--reason", "postponed")
    assert cancel.returncode == 0 and "2 cancellation notice(s) queued" in cancel.stdout


def test_sigkill_mid_batch_then_restart_delivers_every_notice_exactly_once(tmp_path):
    with SmtpSink(delay=10.0, slow=(3,)) as sink:   # the third DATA hangs: the kill lands inside it
        policies = copy_policies(tmp_path)
        (policies / "maintenance.yaml").write_text(smtp_yaml(sink.port))
        d = DaemonProcess(tmp_path, policies=policies).start()
        try:
            res = d.ctl(*add_args("mw-crash", 30, "--tags", "fiber-home,fiber-biz,public-safety"))
            assert res.returncode == 0 and "5 notice(s) queued" in res.stdout, res.stdout + res.stderr
            expected = {f"<mw-crash.notice.0.{c}@isp.example>" for c in ("c1001", "c1002", "c1003", "c1004",
                                                                         "c2001")}
            # kill while the third notice is inside the server's DATA handler (not yet accepted)
            wait_for(lambda: sink.data_started >= 3, timeout=20, what="third notice in flight")
            d.kill()
            assert len(sink.messages) == 2
            d2 = DaemonProcess(tmp_path, policies=policies).start()
            try:
                wait_for(lambda: d2.metric("nocpolicy_notices_pending") == 0, timeout=30, what="outbox drained")
                counts = collections.Counter(sink.ids())
                assert set(counts) == expected and set(counts.values()) == {1}, counts
                rows = d2.ctl_json("notices", "--window", "mw-crash")["notices"]
                assert {r["state"] for r in rows} == {"sent"}
                resent = [r for r in rows if r["attempts"] == 2]
                assert len(resent) == 1          # the interrupted one, sent again with its Message-ID
                assert "sending them again with the same Message-ID" in d2.log()
            finally:
                d2.stop()
        finally:
            d.kill()


def test_policy_window_reload_refused_when_late_then_accepted(tmp_path, daemon):
    d = daemon(extra_args=["--no-watch"])
    yaml = d.policies / "maintenance.yaml"
    base = yaml.read_text()

    def with_window(offset: int, extra: str = "") -> str:
        return base + f"""  windows:
    - id: pw-fibre
      kind: planned
      start: {day(offset, 1)}
      end: {day(offset, 4)}
      reason: {{ja: 光ファイバ移設, en: fibre relocation}}
      scope: {{customers: [c1004]}}
{extra}"""
    yaml.write_text(with_window(7))
    res = d.ctl("reload")
    last_day = (dt.datetime.now(JST).date() + dt.timedelta(days=7 - 15)).isoformat()
    assert res.returncode == 1
    assert "maintenance.yaml:" in res.stdout and f"notice by {last_day}" in res.stdout, res.stdout
    assert d.ctl_json("maintenance", "list")["windows"] == []
    yaml.write_text(with_window(7, "      urgent: true\n      urgent_justification: conduit damaged by roadworks\n"))
    assert d.ctl("reload").returncode == 0
    show = d.ctl_json("maintenance", "show", "pw-fibre")
    assert show["window"]["source"] == "policy" and show["window"]["urgent"]
    assert [(n["kind"], n["customer"], n["state"]) for n in show["notices"]] == [("notice", "c1004", "pending")]
    # removing it from the policy cancels it
    yaml.write_text(base)
    assert d.ctl("reload").returncode == 0
    show = d.ctl_json("maintenance", "show", "pw-fibre")
    assert show["window"]["state"] == "cancelled"
