"""End to end: a real kea-dhcp4 in a test namespace leases an address to a real dhclient in
another; nocpolicyd follows Kea's lease file and knows whose address it is."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess

import pytest

from conftest import need_root_netns
from helpers import netns_with_veths, sh, wait_for
from sessions_fixtures import start_daemon

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(need_root_netns() is not None or not shutil.which("kea-dhcp4")
                                 or not shutil.which("dhclient"),
                                 reason=need_root_netns() or "kea-dhcp4 / dhclient not installed")]


@contextlib.contextmanager
def client_namespace(server_ns: str, dev: str):
    name = f"nocpc-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", server_ns, "link", "set", dev, "netns", name)
        sh("ip", "-n", name, "link", "set", dev, "up")
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def kea_config(tmp, leases) -> str:
    return json.dumps({"Dhcp4": {
        "interfaces-config": {"interfaces": ["kea0"], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "name": str(leases), "persist": True, "lfc-interval": 0},
        "valid-lifetime": 600, "renew-timer": 300, "rebind-timer": 500,
        "subnet4": [{"id": 1, "subnet": "10.99.0.0/24", "pools": [{"pool": "10.99.0.100 - 10.99.0.150"}]}],
        "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": str(tmp / "kea.log")}],
                     "severity": "INFO"}],
    }})


@contextlib.contextmanager
def running(argv, ns, env=None, log=None):
    out = open(log, "ab") if log else subprocess.DEVNULL
    p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                         env=dict(os.environ, **(env or {})))
    try:
        yield p
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if log:
            out.close()


def test_dhcp_lease_becomes_a_session_of_the_right_customer(tmp_path):
    leases = tmp_path / "kea-leases4.csv"
    (tmp_path / "kea.json").write_text(kea_config(tmp_path, leases))
    kea_spec = (f"  kea:\n    - path: {leases}\n"
                "      customer_from: {attribute: hostname, regex: '^(?P<id>c[0-9]+)'}\n")
    d, _ = start_daemon(tmp_path, kea=kea_spec)
    kea_env = {"KEA_PIDFILE_DIR": str(tmp_path), "KEA_LOCKFILE_DIR": str(tmp_path)}
    try:
        with netns_with_veths("nocpk", [("kea0", "cli0")]) as srv, client_namespace(srv, "cli0") as cli:
            sh("ip", "-n", srv, "addr", "add", "10.99.0.1/24", "dev", "kea0")
            (tmp_path / "dhclient.conf").write_text('send host-name "c1002-router";\n')
            with running(["kea-dhcp4", "-c", str(tmp_path / "kea.json")], srv, kea_env, tmp_path / "kea.out"), \
                    running(["dhclient", "-d", "-1", "-sf", "/bin/true", "-cf", str(tmp_path / "dhclient.conf"),
                             "-lf", str(tmp_path / "dhclient.leases"), "-pf", str(tmp_path / "dhclient.pid"),
                             "cli0"], cli, log=tmp_path / "dhclient.log"):
                got = wait_for(lambda: d.ctl_json("sessions", "--active")["sessions"], 60,
                               what="the lease to appear as a session")
        (s,) = got
        assert s["source"] == "kea4" and s["customer"] == "c1002" and not s["implicit"]
        address = s["addresses"][0]
        assert address.startswith("10.99.0.")
        who = d.ctl_json("whois", address)
        assert who["matches"][0]["customer"] == "c1002"
        assert d.metric("nocpolicy_sessions_active", {"source": "kea4"}) == 1
    finally:
        d.stop()
