"""The unit's privilege model, for real: nocpolicyd as an unprivileged uid with exactly
the capabilities nocpolicyd.service grants (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE as
ambient + bounding set, no_new_privs), started with the unit's own ExecStart line.

systemd is not PID 1 here, so `setpriv` applies the same credentials the unit would,
inside a network namespace the test creates (with the policy's interface as a veth
link), so that port 53 and nftables/tc are this test's own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import need_root_netns
from helpers import BIN, REPO, wait_for
from test_deploy_systemd import INSTALL_BIN, exec_start_argv, unit_environment, values

UID = 65534           # "nobody": a uid with no privileges and no files of its own
CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12


def unit_caps() -> set[str]:
    caps = set(values("AmbientCapabilities")[0].split())
    assert caps == set(values("CapabilityBoundingSet")[0].split())
    return caps


def setpriv_argv(uid: int) -> list[str]:
    caps = ",".join(f"+{c.lower().removeprefix('cap_')}" for c in sorted(unit_caps()))
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}"]
    if values("NoNewPrivileges") == ["yes"]:
        argv.append("--no-new-privs")
    return argv


def in_ns(ns: str, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns}: {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def unprivileged():
    uid = UID
    why = need_root_netns() or (None if shutil.which("setpriv") else "setpriv (util-linux) not installed")
    if why:
        pytest.skip(why)
    # The checkout and the venv must be readable by that uid (not so under a 0700 home).
    probe = subprocess.run([*setpriv_argv(uid), "--", sys.executable, "-c", "import nocpolicy.app"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"uid {uid} cannot import nocpolicy from this checkout/venv "
                    f"({probe.stderr.strip().splitlines()[-1:]}): run from a world-readable path")
    ns = f"nocp-dep-{secrets.token_hex(3)}"
    work = Path(tempfile.mkdtemp(prefix="nocpolicy-priv-"))
    proc = log = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "add", "nocp-down0", "type", "veth",
                        "peer", "name", "nocp-peer0"], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", "nocp-down0", "up"], check=True, timeout=10)
        work.chmod(0o755)
        policies = work / "policies"
        shutil.copytree(REPO / "policies", policies)
        state = work / "state"
        state.mkdir(mode=0o700)
        os.chown(state, uid, uid)
        env = unit_environment() | {"NOCPOLICY_DNS": "127.0.0.1:53"}
        argv = exec_start_argv(env)
        assert argv[0] == INSTALL_BIN + "nocpolicyd"
        argv[0] = str(BIN / "nocpolicyd")
        argv[argv.index("--policies") + 1] = str(policies)
        argv[argv.index("--state-dir") + 1] = str(state)
        log = open(work / "nocpolicyd.log", "wb")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *setpriv_argv(uid), "--", *argv, "--no-watch"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=work)

        def ready():
            if proc.poll() is not None:
                raise AssertionError("nocpolicyd exited:\n" + (work / "nocpolicyd.log").read_text(errors="replace"))
            probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9753/readyz', timeout=2).status)"
            return in_ns(ns, sys.executable, "-c", probe, check=False).stdout.strip() == "200"
        wait_for(ready, 30, interval=0.2, what="unprivileged nocpolicyd ready")
        yield {"ns": ns, "proc": proc, "state": state, "work": work, "uid": uid}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, (work / "nocpolicyd.log").read_text(errors="replace")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if log:
            log.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def metric(ns: str, name: str) -> float | None:
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9753/metrics', timeout=2).read().decode())"
    for line in in_ns(ns, sys.executable, "-c", probe).stdout.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    return None


def test_runs_with_exactly_the_units_credentials(unprivileged):
    st = proc_status(unprivileged["proc"].pid)
    assert st["Name"].startswith("nocpolicyd") or "python" in st["Name"]
    uid = unprivileged["uid"]
    assert st["Uid"].split()[:2] == [str(uid), str(uid)]
    want = (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_ADMIN)
    assert {c for c in unit_caps()} == {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"}
    assert int(st["CapEff"], 16) == want
    assert int(st["CapBnd"], 16) == want
    assert st["NoNewPrivs"].strip() == "1"
    # What it created is private to it.
    for f in ("admin.token", "pseudonym.key", "nocpolicy.db"):
        s = (unprivileged["state"] / f).stat()
        assert s.st_uid == uid and s.st_mode & 0o077 == 0, f


def test_answers_dns_on_port_53_without_root(unprivileged):
    if shutil.which("dig") is None:
        pytest.skip("dig not installed (dnsutils)")
    out = in_ns(unprivileged["ns"], "dig", "@127.0.0.1", "-p", "53", "+tries=1", "+time=3",
                "mandatory-blocked.invalid", "A").stdout
    assert "status: NXDOMAIN" in out, out


def test_enforces_with_only_cap_net_admin(unprivileged):
    """nftables and tc rules are installed with nothing but CAP_NET_ADMIN."""
    ns = unprivileged["ns"]
    assert metric(ns, "nocpolicy_enforcement_enforcing") == 1.0
    tables = in_ns(ns, "nft", "list", "tables").stdout
    assert "nocpolicy" in tables, tables
    qdisc = in_ns(ns, "tc", "qdisc", "show", "dev", "nocp-down0").stdout
    assert "htb" in qdisc, qdisc
