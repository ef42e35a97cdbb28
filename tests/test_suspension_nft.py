"""The walled garden in nftables: the plan from the subscriber view (pure), its script against a
golden file and nft's own parser, and on the real kernel in namespaces with real traffic:
customer -> router (nocpolicyd, DNS guard and notice page) -> web (the real test site, the
payment site). A headless chromium in the customer's namespace opens http://site.test/: the
notice page with the customer's reason and period; after ``resume`` the same URL is the site."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import need_root_netns
from helpers import BIN, copy_policies, free_port, sh, wait_for
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.walled import WalledPlan, render_walled, walled_plan
from nocpolicy.subscribers.model import Decision, Decisions
from nocpolicy.subscribers.view import build_view, update_view
from test_qos_render import golden

SUSPENSION = {"suspension": {"notice_page": {"listen": "192.0.2.1:80"}, "allow": ["pay.test"],
                             "allow_addresses": ["203.0.113.60/32"], "provider": "Test ISP",
                             "contact": {"ja": "サポート窓口", "en": "support desk"}}}


def suspended(cid: str, mode: str, sid: int = 1) -> Decision:
    return Decision("suspension", cid, {"id": sid, "mode": mode, "cause": "nonpayment", "reason": "unpaid",
                                        "start": "2026-03-02T00:00:00+00:00", "end": None, "rate": None})


def test_plan_and_golden_script(tmp_path):
    pol = copy_policies(tmp_path)
    (pol / "suspension.yaml").write_text(yaml.safe_dump(SUSPENSION))
    policy = load_policy(pol)
    view = build_view(policy.customers, "protect", Decisions())
    assert walled_plan(policy, view).empty
    d1, d2 = suspended("c1001", "walled-garden"), suspended("c1003", "block", 2)
    decisions = Decisions().with_(d1).with_(d2)
    view = update_view(view, decisions, ("c1001", "c1003"))
    plan = walled_plan(policy, view)
    assert plan == WalledPlan(("192.0.2.0/26", "2001:db8:1001::/48"), ("198.51.100.0/25", "2001:db8:1003::/48"),
                              ("192.0.2.1/32", "203.0.113.60/32"), ("192.0.2.1/32",))
    # throttle is qos caps' business, not the garden's
    thr = dataclasses.replace(d2, value={**d2.value, "mode": "throttle", "rate": 1_000_000})
    assert walled_plan(policy, update_view(view, decisions.with_(thr), ("c1003",))).blocked == ()
    script = render_walled(plan)
    golden("walled.nft", script)
    if need_root_netns() is None:
        f = tmp_path / "walled.nft"
        f.write_text(script)
        sh("nft", "-c", "-f", str(f))


pytestmark_netns = pytest.mark.skipif(need_root_netns() is not None, reason=need_root_netns() or "")


@pytest.fixture
def topo(tmp_path):
    sfx = secrets.token_hex(3)
    cust, rtr, web = f"scus-{sfx}", f"srtr-{sfx}", f"sweb-{sfx}"
    procs: list[subprocess.Popen] = []
    resolv = Path(f"/etc/netns/{cust}")
    try:
        for n in (cust, rtr, web):
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", cust, "link", "add", "c0", "type", "veth", "peer", "name", "nocp-down0", "netns", rtr)
        sh("ip", "-n", rtr, "link", "add", "w0", "type", "veth", "peer", "name", "x0", "netns", web)
        for n, dev, addrs in ((cust, "c0", ["192.0.2.10/26"]), (rtr, "nocp-down0", ["192.0.2.1/26"]),
                              (rtr, "w0", ["10.77.0.1/24"]),
                              (web, "x0", ["10.77.0.2/24", "203.0.113.50/32", "203.0.113.60/32"])):
            for a in addrs:
                sh("ip", "-n", n, "addr", "add", a, "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", cust, "route", "add", "default", "via", "192.0.2.1")
        sh("ip", "-n", web, "route", "add", "default", "via", "10.77.0.1")
        sh("ip", "-n", rtr, "route", "add", "203.0.113.0/24", "via", "10.77.0.2")
        sh("ip", "netns", "exec", rtr, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text("nameserver 192.0.2.1\noptions timeout:2 attempts:2\n")
        for addr, text in (("203.0.113.50", "REAL TEST SITE"), ("203.0.113.60", "PAYMENT SITE")):
            root = tmp_path / addr
            root.mkdir()
            (root / "index.html").write_text(f"<html><body><h1>{text}</h1></body></html>")
            (root / "big.bin").write_bytes(bytes(400_000))
            procs.append(subprocess.Popen(["ip", "netns", "exec", web, sys.executable, "-m", "http.server", "80",
                                           "--bind", addr, "--directory", str(root)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: sh("ip", "netns", "exec", web, "ss", "-ltn").count(":80 ") >= 2, 10, what="web servers")
        yield {"cust": cust, "rtr": rtr, "web": web, "procs": procs}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for n in (cust, rtr, web):
            sh("ip", "netns", "del", n, check=False)
        (resolv / "resolv.conf").unlink(missing_ok=True)
        if resolv.exists():
            resolv.rmdir()


class RouterDaemon:
    """nocpolicyd (and the unbound it forwards to) running inside the router namespace."""

    def __init__(self, tmp: Path, rtr: str, dns_listen: str = "192.0.2.1:53", extra_args: tuple = ()):
        """``extra_args`` after the defaults (a later ``--enforce`` wins): a fleet role, MQTT."""
        self.tmp, self.rtr = tmp, rtr
        self.dns_listen, self.extra_args = dns_listen, list(extra_args)
        tmp.mkdir(parents=True, exist_ok=True)
        self.admin, self.metrics, self.ub_port = free_port(), free_port(), free_port()
        pol = copy_policies(tmp)
        dns = yaml.safe_load((pol / "dns.yaml").read_text())
        dns["dns"]["upstreams"] = [{"id": "unbound", "address": f"127.0.0.1:{self.ub_port}", "timeout": "1s"}]
        (pol / "dns.yaml").write_text(yaml.safe_dump(dns, allow_unicode=True))
        (pol / "suspension.yaml").write_text(yaml.safe_dump(SUSPENSION, allow_unicode=True))
        self.policies, self.state = pol, tmp / "state"
        self.procs: list[subprocess.Popen] = []

    def start(self) -> RouterDaemon:
        conf = self.tmp / "unbound.conf"
        conf.write_text(textwrap.dedent(f"""\
            server:
                interface: 127.0.0.1
                port: {self.ub_port}
                do-daemonize: no
                use-syslog: no
                logfile: ""
                username: ""
                chroot: ""
                directory: "{self.tmp}"
                pidfile: "{self.tmp}/unbound.pid"
                do-ip6: no
                access-control: 127.0.0.0/8 allow
                local-zone: "." static
                local-data: "site.test. 60 IN A 203.0.113.50"
                local-data: "pay.test. 60 IN A 203.0.113.60"
            remote-control:
                control-enable: no
            """))
        log = open(self.tmp / "rtr.log", "ab")
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.rtr, "unbound", "-d", "-c", str(conf)],
                                           stdout=log, stderr=subprocess.STDOUT))
        self.procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.rtr, str(BIN / "nocpolicyd"), "--policies", str(self.policies),
             "--state-dir", str(self.state), "--dns-listen", self.dns_listen, "--enforce", "linux",
             "--metrics-listen", f"127.0.0.1:{self.metrics}", "--admin-listen", f"127.0.0.1:{self.admin}",
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT))
        wait_for(self._ready, 30, what="nocpolicyd in the router namespace")
        return self

    def _ready(self) -> bool:
        if self.procs[-1].poll() is not None:
            raise AssertionError((self.tmp / "rtr.log").read_text())
        return self.ctl("status").returncode == 0

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.rtr, str(BIN / "nocpolicyctl"), "--admin",
                               f"127.0.0.1:{self.admin}", "--state-dir", str(self.state), "--json", *args],
                              capture_output=True, text=True, timeout=30)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


GET = """
import sys, time, urllib.request
t0 = time.monotonic()
with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
    body = r.read()
dt = time.monotonic() - t0
sys.stdout.write(f"{len(body) / dt:.0f}\\n" if sys.argv[3] == "speed" else body.decode(errors="replace"))
"""


def fetch(ns: str, url: str, timeout: float = 3) -> str | None:
    """The body fetched from inside ``ns`` (a plain HTTP client), or None when the connection fails
    (dropped: times out)."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", GET, url, str(timeout), "body"],
                       capture_output=True, text=True, timeout=timeout + 30)
    return r.stdout if r.returncode == 0 else None


BROWSE = """
import sys
from browser import chromium
with chromium() as d:
    d.get(sys.argv[1])
    print(d.find_element("tag name", "body").text)
"""


@pytestmark_netns
def test_walled_garden_block_and_resume_in_namespaces(topo, tmp_path):
    from browser import missing, run_in_netns
    cust, rtr = topo["cust"], topo["rtr"]
    d = RouterDaemon(tmp_path, rtr).start()
    try:
        assert "REAL TEST SITE" in (fetch(cust, "http://203.0.113.50/") or "")
        r = d.ctl("suspend", "c1001", "--cause", "nonpayment", "--mode", "walled-garden", "--reason",
                  "invoice 2026-02 unpaid", "--urgent", "--justification", "third reminder unanswered")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["nftables"]["enforced"] is True
        # forwarded traffic is dropped at once, except the payment site (allow_addresses) ...
        assert fetch(cust, "http://203.0.113.50/") is None
        assert "PAYMENT SITE" in (fetch(cust, "http://203.0.113.60/") or "")
        # ... and names lead to the notice page (served by the router), any Host
        page = fetch(cust, "http://site.test/whatever")
        assert page is not None and "invoice 2026-02 unpaid" in page
        assert "PAYMENT SITE" in (fetch(cust, "http://pay.test/") or "")
        drops = sh("ip", "netns", "exec", rtr, "nft", "list", "table", "inet", "nocpolicy_suspend")
        assert "192.0.2.0/26" in drops and "packets 0 " not in drops.split("ip saddr @walled4 counter")[1][:40]
        if missing() is None:
            out = run_in_netns(cust, BROWSE, "http://site.test/")
            assert out.returncode == 0, out.stderr[-2000:]
            assert "invoice 2026-02 unpaid" in out.stdout and "until resumed" in out.stdout, out.stdout

        assert d.ctl("resume", "c1001", "--reason", "paid").returncode == 0
        assert "REAL TEST SITE" in (fetch(cust, "http://203.0.113.50/") or "")
        assert "REAL TEST SITE" in (fetch(cust, "http://site.test/") or "")
        if missing() is None:
            out = run_in_netns(cust, BROWSE, "http://site.test/")
            assert "REAL TEST SITE" in out.stdout, out.stdout + out.stderr[-2000:]

        # block: the payment site is dropped too; the notice page stays
        r = d.ctl("suspend", "c1001", "--cause", "prohibited-use", "--mode", "block", "--reason", "open relay",
                  "--urgent", "--justification", "spam wave")
        assert r.returncode == 0, r.stderr
        assert fetch(cust, "http://203.0.113.60/") is None
        assert "open relay" in (fetch(cust, "http://pay.test/") or "")
        assert d.ctl("resume", "c1001").returncode == 0

        # throttle: DNS and forwarding as usual, downloads capped at --rate by the qos cap classes
        r = d.ctl("suspend", "c1001", "--cause", "obligations", "--mode", "throttle", "--rate", "1mbit",
                  "--reason", "fair use", "--urgent", "--justification", "congestion")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "ceil 1Mbit" in sh("ip", "netns", "exec", rtr, "tc", "class", "show", "dev", "nocp-down0"),
                 30, what="a 1 Mbit/s cap class")
        assert "REAL TEST SITE" in (fetch(cust, "http://site.test/") or "")
        speed = download_speed(cust, "http://203.0.113.50/big.bin")
        assert speed <= 1.3 * 1_000_000 / 8, f"{speed * 8 / 1e6:.2f} Mbit/s through a 1 Mbit/s throttle"
        wait_for(lambda: json.loads(d.ctl("usage").stdout)["directions"]["upload"].startswith("enforced"), 30,
                 what="upload caps enforced (ifb)")
        speed = upload_speed(topo, "203.0.113.50")
        assert speed <= 1.3 * 1_000_000 / 8, f"{speed * 8 / 1e6:.2f} Mbit/s up through a 1 Mbit/s throttle"
        assert d.ctl("resume", "c1001").returncode == 0
        wait_for(lambda: "ceil 1Mbit" not in sh("ip", "netns", "exec", rtr, "tc", "class", "show", "dev",
                                                "nocp-down0"), 30, what="the throttle lifted")
    finally:
        d.stop()


SINK = """
import socket, sys
s = socket.create_server((sys.argv[1], 9000))
print("ready", flush=True)
c, _ = s.accept()
n = 0
while (b := c.recv(65536)):
    n += len(b)
c.sendall(str(n).encode())
c.close()
"""

SEND = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 9000), timeout=60)
t0 = time.monotonic()
c.sendall(bytes(400_000))
c.shutdown(socket.SHUT_WR)
assert int(c.recv(64)) == 400_000
print(f"{400_000 / (time.monotonic() - t0):.0f}")
"""


def upload_speed(topo: dict, dst: str) -> float:
    """Bytes per second of one 400 KB upload from the customer to ``dst`` in the web namespace."""
    sink = subprocess.Popen(["ip", "netns", "exec", topo["web"], sys.executable, "-c", SINK, dst],
                            stdout=subprocess.PIPE, text=True)
    topo["procs"].append(sink)
    assert sink.stdout.readline().strip() == "ready"
    r = subprocess.run(["ip", "netns", "exec", topo["cust"], sys.executable, "-c", SEND, dst],
                       capture_output=True, text=True, check=True, timeout=90)
    return float(r.stdout)


def download_speed(ns: str, url: str) -> float:
    """Bytes per second of one download from inside ``ns`` (a busy machine only slows it down)."""
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", GET, url, "60", "speed"],
                       capture_output=True, text=True, check=True, timeout=90)
    return float(r.stdout)


def test_live_session_addresses_of_suspended_customers_are_walled(tmp_path):
    pol = copy_policies(tmp_path)
    (pol / "suspension.yaml").write_text(yaml.safe_dump(SUSPENSION))
    policy = load_policy(pol)
    view = update_view(build_view(policy.customers, "protect", Decisions()),
                       Decisions().with_(suspended("c1001", "walled-garden")), ("c1001",))
    live = [((4, int(ipaddress.IPv4Address("100.64.3.7")), 32), "c1001"),
            ((4, int(ipaddress.IPv4Address("192.0.2.9")), 32), "c1001"),      # inside its static /26
            ((4, int(ipaddress.IPv4Address("100.64.3.8")), 32), "c1002")]     # not suspended
    assert walled_plan(policy, view, live).walled == ("192.0.2.0/26", "2001:db8:1001::/48", "100.64.3.7/32")
