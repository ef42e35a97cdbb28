"""Start, refuse to start, stop: a real nocpolicyd process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from helpers import BIN, REPO, DaemonProcess, free_port, http_get, wait_for


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_state_files_are_private(daemon):
    d = daemon()
    assert mode(d.state_dir) == 0o700
    for name in ("admin.token", "pseudonym.key", "nocpolicy.db", "nocpolicy.db-wal", "nocpolicy.db-shm"):
        assert mode(d.state_dir / name) == 0o600, name
    assert len((d.state_dir / "pseudonym.key").read_bytes()) == 32
    token = d.token()
    d.stop()
    # Restart keeps the token and the key, and repairs loose permissions.
    for name in ("admin.token", "pseudonym.key", "nocpolicy.db", "nocpolicy.db-wal", "nocpolicy.db-shm"):
        if (d.state_dir / name).exists():
            os.chmod(d.state_dir / name, 0o644)
    os.chmod(d.state_dir, 0o755)
    d2 = DaemonProcess(d.workdir, policies=d.policies).start()
    try:
        assert d2.token() == token
        assert mode(d2.state_dir) == 0o700
        for name in ("admin.token", "pseudonym.key", "nocpolicy.db", "nocpolicy.db-wal", "nocpolicy.db-shm"):
            assert mode(d2.state_dir / name) == 0o600, name
    finally:
        d2.stop()


def test_admin_api_needs_the_token(daemon):
    d = daemon()
    base = f"http://{d.admin}"
    assert http_get(f"{base}/v1/status")[0] == 401
    assert http_get(f"{base}/v1/status", token="wrong")[0] == 401
    assert http_get(f"{base}/v1/status", token=d.token() + "x")[0] == 401
    status, body = http_get(f"{base}/v1/status", token=d.token())
    assert status == 200 and json.loads(body)["daemon"]["pid"] == d.proc.pid
    import urllib.request
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": d.token()}):
        req = urllib.request.Request(f"{base}/v1/cmd/reload", data=b"{}", method="POST", headers=headers)
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("accepted without a valid token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            assert exc.headers["WWW-Authenticate"].startswith("Bearer")
    # The CLI with a wrong token file is refused (exit 1), without the daemon exits 3.
    other = d.workdir / "other-state"
    other.mkdir()
    (other / "admin.token").write_text("wrong\n")
    res = subprocess.run([str(BIN / "nocpolicyctl"), "--admin", d.admin, "--state-dir", str(other), "status"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "token" in res.stderr
    res = subprocess.run([str(BIN / "nocpolicyctl"), "--admin", f"127.0.0.1:{free_port()}",
                          "--state-dir", str(d.state_dir), "status"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "cannot reach nocpolicyd" in res.stderr


def test_unknown_command_and_bad_arguments(daemon):
    d = daemon()
    res = d.ctl_json("audit", "--limit", "5")
    assert isinstance(res["audit"], list)
    import urllib.request
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/no.such", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {d.token()}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 404
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/status", data=b'{"bogus": 1}', method="POST",
                                 headers={"Authorization": f"Bearer {d.token()}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 400 and b"bogus: unknown key" in info.value.read()


def test_sigterm_stops_in_reverse_order(daemon):
    d = daemon()
    order = list(d.ctl_json("status")["components"])
    assert order[0] == "dns"
    t0 = time.monotonic()
    assert d.stop(timeout=10) == 0
    took = time.monotonic() - t0
    assert took < 5, f"took {took:.1f}s to stop"
    log = d.log()
    stopped = [line.rsplit("stopped ", 1)[1].split()[0] for line in log.splitlines()
               if " nocpolicy: stopped " in line]
    assert stopped == list(reversed(order)), log
    assert log.index("nocpolicy: stopping") < log.index(f"stopped {order[-1]}")


def test_json_logs(daemon, policy_dir):
    d = daemon(policies=policy_dir, extra_args=["--log-format", "json", "--no-watch"])
    v1 = d.ctl_json("status")["policy"]["version"]
    with open(policy_dir / "customers.yaml", "a") as f:
        f.write("  - id: c9001\n    name: New\n")
    d.ctl("reload", check=True)
    (policy_dir / "zz.yaml").write_text("plans: 5\n")
    assert d.ctl("reload").returncode == 1
    d.stop()
    lines = [json.loads(line) for line in d.log().splitlines() if line.strip()]
    assert lines, "no log lines"
    assert all({"ts", "level", "logger", "msg"} <= set(rec) for rec in lines)
    events = {rec.get("event"): rec for rec in lines if rec.get("event")}
    assert events["ready"]["policy_version"] == v1 and " ready: policy " in events["ready"]["msg"]
    reload = events["policy.reload"]
    assert reload["old_version"] == v1 and reload["source"] == "nocpolicyctl" and reload["level"] == "info"
    refused = events["policy.refused"]
    assert refused["level"] == "error" and refused["problems"] == 1
    assert refused["policy_version"] == reload["policy_version"]


def test_refuses_to_start_on_invalid_policy(tmp_path, policy_dir):
    (policy_dir / "zz.yaml").write_text("plans:\n  - id: p9\n    down: fast\n")
    d = DaemonProcess(tmp_path, policies=policy_dir).start(wait=False)
    assert d.proc.wait(20) == 2
    d.kill()
    log = d.log()
    assert f"{policy_dir}/zz.yaml:3: plans[0].down: 'fast' is not a rate" in log
    assert "refusing to start: 1 problem(s)" in log


def test_refuses_to_start_when_a_port_is_taken(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d = DaemonProcess(tmp_path)
        d.admin_port = port
        d.start(wait=False)
        assert d.proc.wait(20) == 1
        d.kill()
    assert f"admin API cannot listen on 127.0.0.1:{port}" in d.log()
    assert "Traceback" not in d.log()


def test_metrics_health_and_promtool(daemon):
    d = daemon()
    assert http_get(f"{d.metrics_url}/healthz") == (200, "ok\n")
    assert http_get(f"{d.metrics_url}/readyz") == (200, "ready\n")
    text = d.metrics()
    for name in ("nocpolicy_build_info", "nocpolicy_policy_reloads_total",
                 "nocpolicy_policy_last_reload_success_timestamp_seconds", "nocpolicy_policy_info",
                 "nocpolicy_component_up", "nocpolicy_policy_last_reload_failed"):
        assert f"\n{name}" in text, name
    assert "_created" not in text
    assert d.metric("nocpolicy_component_up", {"component": "dns"}) == 1
    assert abs(d.metric("nocpolicy_policy_last_reload_success_timestamp_seconds") - time.time()) < 120
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (tests/run-all.sh installs prometheus)")
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stdout + res.stderr


def test_no_flags_from_a_checkout_reaches_ready(tmp_path):
    """The embedded default: ./policies, ./state, 8053/9753/9754 on loopback."""
    for port in (8053, 9753, 9754):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"127.0.0.1:{port} is in use here (another nocpolicyd?)")
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([str(BIN / "nocpolicyd")], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ours_ready() -> bool:
            # its own "ready" line, not just a 200 on :9753 (another test run on this machine
            # may start its embedded default between the port check above and this start)
            text = (tmp_path / "log").read_text(errors="replace")
            if proc.poll() is not None and "already in use" in text:
                pytest.skip("the default ports were taken by another process during the test")
            return proc.poll() is None and " ready: policy " in text and \
                http_get("http://127.0.0.1:9753/readyz", timeout=1)[0] == 200

        wait_for(ours_ready, timeout=20, what="default nocpolicyd ready")
        res = subprocess.run([str(BIN / "nocpolicyctl"), "status"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=30)
        assert res.returncode == 0 and "policy" in res.stdout
        assert (tmp_path / "state" / "admin.token").exists()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        log.close()
    text = (tmp_path / "log").read_text()
    assert "listening on http://127.0.0.1:9753" in text and "listening on http://127.0.0.1:9754" in text


def test_refuses_to_start_without_a_usable_state_dir(tmp_path):
    d = DaemonProcess(tmp_path)
    d.state_dir.write_text("a file, not a directory\n")
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    d.kill()
    assert f"cannot prepare the state directory {d.state_dir}" in d.log() and "Traceback" not in d.log()
