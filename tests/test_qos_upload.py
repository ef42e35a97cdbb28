"""Upload caps (Art. 23 utilisation limits, customer -> network): ifb + ingress + u32/mirred.

Golden file for the rendered tc lines, the Linux backend in a namespace (apply, verify, no
change on a re-apply, removal, rollback), and real iperf3 uploads through the real daemon.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import time

import pytest
import yaml

from conftest import need_root_netns
from helpers import DaemonProcess, copy_policies, netns_with_veths, sh, wait_for
from nocpolicy.errors import EnforcementError
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.apply import LinuxBackend
from nocpolicy.qos.ingress import parse_filters
from nocpolicy.qos.kernel import parse_classes
from nocpolicy.qos.plan import Emergency, HtbClass, build_plan
from nocpolicy.qos.render import render_nft, render_tc
from nocpolicy.qos.serial import plan_from_json, plan_to_json
from nocpolicy.qos.upload import ifb_name
from test_qos_render import GOLDEN, golden

root = pytest.mark.skipif(need_root_netns() is not None, reason=need_root_netns() or "")


@pytest.fixture(scope="module")
def policy():
    """The golden policy with an upload cap on the home plan (1 Mbit/s)."""
    pol = load_policy(str(GOLDEN / "policy"))
    home = dataclasses.replace(pol.plans_by_id["home"], up=1_000_000)
    return dataclasses.replace(pol, plans=tuple(home if p.id == "home" else p for p in pol.plans))


def test_golden_upload(policy):
    plan = build_plan(policy, redirect="u32")
    golden("upload.tc", render_tc(plan))
    assert render_nft(plan) == (GOLDEN / "normal.nft").read_text(), "uploads are tc only: nft is unchanged"
    assert render_tc(build_plan(policy)) == (GOLDEN / "tree.tc").read_text(), "no redirect: no upload shaping"
    assert "matchall action mirred" in render_tc(build_plan(policy, redirect="matchall"))
    assert render_tc(build_plan(policy, Emergency("quake"), redirect="u32")) == render_tc(plan)


def test_upload_plan_content(policy):
    plan = build_plan(policy, redirect="u32")
    assert [u.ifb for u in plan.uploads] == ["down0-up", "down1-up"]
    cls = {c.name: c for c in plan.uploads[0].tree.classes}
    assert cls["up:c1"].ceil == 1_000_000 and "up:c2" not in cls      # biz has no up cap
    assert {e.prefix for e in plan.up_caps} == {"192.0.2.0/26", "2001:db8:1::/48"}
    assert plan_from_json(plan_to_json(plan)) == plan
    assert ifb_name("a-very-long-if0").startswith("nqup") and len(ifb_name("a-very-long-if0")) <= 15


def test_past_the_u32_limit_live_addresses_go_uncapped_not_the_plan(policy):
    """The u32 list is linear (4000 prefixes per family): past it, live addresses (last) get no
    upload cap and the count shows; static prefixes and the download plan are untouched."""
    from nocpolicy.qos.plan import build_static
    from nocpolicy.qos.subjects import Subject, subjects_of
    from nocpolicy.qos.upload import MAX_UP_PREFIXES
    base = subjects_of(policy)
    live = tuple(Subject(f"s{i:05d}", (f"100.64.{i >> 8}.{i & 255}",), "home") for i in range(MAX_UP_PREFIXES))
    st = build_static(policy, (*base, *live), redirect="u32")
    v4 = [e.prefix for e in st.up_caps if ":" not in e.prefix]
    assert len(v4) == MAX_UP_PREFIXES and st.up_dropped == 1
    assert v4[0] == "192.0.2.0/26", "static prefixes are kept first"
    assert len(st.normal_caps) == len(build_static(policy, (*base, *live)).normal_caps)


def test_parse_filters_reads_back_prefixes():
    out = """filter parent 1: protocol ip pref 10 u32 chain 0
filter parent 1: protocol ip pref 10 u32 chain 0 fh 800: ht divisor 1
filter parent 1: protocol ip pref 10 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 *flowid 1:100 not_in_hw
  match c0000200/ffffffc0 at 12
filter parent 1: protocol ip pref 10 u32 chain 0 fh 800::801 order 2049 key ht 800 bkt 0 *flowid 1:101 not_in_hw
  match 64400307/ffffffff at 12
filter parent 1: protocol ipv6 pref 11 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 *flowid 1:100 not_in_hw
  match 20010db8/ffffffff at 8
  match 00010000/ffff0000 at 12
"""
    prefs, found = parse_filters(out)
    assert prefs == {10, 11}
    assert found == {("192.0.2.0/26", 0x100), ("100.64.3.7", 0x101), ("2001:db8:1::/48", 0x100)}


def test_plan_only_says_no_direction_is_enforced(daemon):
    """The embedded default (nocp-down0 does not exist): usage and status say, per direction,
    that nothing reaches the kernel."""
    d = daemon(extra_args=["--enforce", "auto"])
    dirs = d.ctl_json("usage")["directions"]
    assert dirs["download"].startswith("not enforced: plan-only") and dirs["upload"] == dirs["download"]
    assert d.ctl_json("status")["components"]["qos"]["directions"] == dirs
    out = d.ctl("emergency", "status", check=True).stdout
    assert "upload caps: not enforced: plan-only" in out and "download caps: not enforced" in out


# -- the Linux backend in a namespace ---------------------------------------------------------


@pytest.fixture
def ns():
    with netns_with_veths("nocpu", [("down0", "peer0"), ("down1", "peer1")]) as name:
        yield name


def ex(ns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns, *argv)


@root
def test_apply_verify_reapply_and_remove(ns, policy):
    b = LinuxBackend(ns)
    b.apply(build_plan(policy, redirect="u32"))
    assert "Egress Redirect to device down0-up" in ex(ns, "tc", "filter", "show", "dev", "down0", "ingress")
    k = parse_classes(ex(ns, "tc", "class", "show", "dev", "down0-up"))
    assert k[0x100].ceil == 1_000_000 and k[0x100].parent == 0x1
    _, found = parse_filters(ex(ns, "tc", "filter", "show", "dev", "down0-up", "parent", "1:"))
    assert found == {("192.0.2.0/26", 0x100), ("2001:db8:1::/48", 0x100)}
    # a restarted daemon (a new backend) finds everything in place: no tc command at all
    assert LinuxBackend(ns).apply(build_plan(policy, redirect="u32")).tc_commands == 0
    # a new prefix: filters are swapped make-before-break into the other generation's prefs
    c1 = dataclasses.replace(policy.customers_by_id["c1"], prefixes=(
        *policy.customers_by_id["c1"].prefixes, __import__("ipaddress").ip_network("192.0.2.128/28")))
    more = dataclasses.replace(policy, customers=tuple(c1 if c.id == "c1" else c for c in policy.customers))
    b.apply(build_plan(more, redirect="u32"))
    prefs, found = parse_filters(ex(ns, "tc", "filter", "show", "dev", "down0-up", "parent", "1:"))
    assert prefs == {20, 21} and ("192.0.2.128/28", 0x100) in found and len(found) == 3
    # generations swap back and forth (a re-render per second does that all day)
    for i in range(4):
        plan = build_plan(more if i % 2 else policy, redirect="u32")
        b.apply(plan)
        _, found = parse_filters(ex(ns, "tc", "filter", "show", "dev", "down0-up", "parent", "1:"))
        assert len(found) == len(plan.up_caps) and LinuxBackend(ns).apply(plan).tc_commands == 0
    # the policy drops every up cap: the redirect and the ifb devices go
    b.apply(build_plan(load_policy(str(GOLDEN / "policy")), redirect="u32"))
    assert "down0-up" not in ex(ns, "ip", "link", "show")
    assert "mirred" not in ex(ns, "tc", "filter", "show", "dev", "down0", "ingress")


@root
def test_failed_apply_removes_the_ifb_it_made(ns, policy):
    b = LinuxBackend(ns)
    b.apply(build_plan(load_policy(str(GOLDEN / "policy"))))          # downloads only
    plan = build_plan(policy, redirect="u32")
    up = plan.uploads[0]
    orphan = HtbClass(0x200, 0x77, "up:orphan", 8000, 8000, 2, True)     # its parent 1:77 does not exist
    bad_up = dataclasses.replace(up, tree=dataclasses.replace(up.tree, classes=(*up.tree.classes, orphan)))
    bad = dataclasses.replace(plan, uploads=(bad_up, *plan.uploads[1:]))
    # the kernel takes the class as a root class (the HTB trap); the read-back catches it
    with pytest.raises(EnforcementError, match=r"verify: down0-up class 1:200 \(up:orphan\) hangs under the root.*"
                                               r"tc rolled back; ifb down0-up, down1-up removed"):
        b.apply(bad)
    assert "down0-up" not in ex(ns, "ip", "link", "show"), "the ifb made for the failed plan must go"
    assert "ingress" not in ex(ns, "tc", "qdisc", "show", "dev", "down0")


# -- real uploads through the real daemon -----------------------------------------------------

RATE, CAP_BPS, OFFER = "20mbit", 1_000_000, "4M"
SECONDS = 4


@pytest.fixture
def topo():
    """cust (c0: 192.0.2.2 capped c1001, 192.0.2.66 uncapped c1002) -> rtr (nocp-down0 | u0) -> srv."""
    sfx = secrets.token_hex(3)
    cust, rtr, srv = f"qucu-{sfx}", f"qurt-{sfx}", f"qusv-{sfx}"
    servers: list[subprocess.Popen] = []
    try:
        for n in (cust, rtr, srv):
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", rtr, "link", "add", "nocp-down0", "type", "veth", "peer", "name", "c0", "netns", cust)
        sh("ip", "-n", rtr, "link", "add", "u0", "type", "veth", "peer", "name", "s0", "netns", srv)
        for n, dev, addrs in ((cust, "c0", ["10.98.0.2/24", "192.0.2.2/32", "192.0.2.66/32"]),
                              (rtr, "nocp-down0", ["10.98.0.1/24"]), (rtr, "u0", ["10.98.1.1/24"]),
                              (srv, "s0", ["10.98.1.2/24"])):
            for a in addrs:
                sh("ip", "-n", n, "addr", "add", a, "dev", dev)
            sh("ip", "-n", n, "link", "set", dev, "up")
        sh("ip", "-n", cust, "route", "add", "default", "via", "10.98.0.1")
        sh("ip", "-n", srv, "route", "add", "default", "via", "10.98.1.1")
        sh("ip", "-n", rtr, "route", "add", "192.0.2.0/24", "via", "10.98.0.2")
        sh("ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for port in (5301, 5302):
            servers.append(subprocess.Popen(["ip", "netns", "exec", srv, "iperf3", "-s", "-p", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield cust, rtr, srv
    finally:
        for p in servers:
            p.kill()
            p.wait()
        for n in (cust, rtr, srv):
            sh("ip", "netns", "del", n, check=False)


def class_bytes(rtr: str, ifb: str, minor: int) -> tuple[int, int]:
    k = parse_classes(sh("ip", "netns", "exec", rtr, "tc", "-s", "class", "show", "dev", ifb))[minor]
    return k.bytes, k.drops


def upload(cust: str, src: str, port: int) -> dict:
    """One UDP upload at OFFER for SECONDS from ``src`` (iperf3 in the customer's namespace)."""
    deadline = time.monotonic() + 30
    while True:       # the server may still be starting on a busy machine
        p = subprocess.run(["ip", "netns", "exec", cust, "iperf3", "-c", "10.98.1.2", "-p", str(port), "-B", src,
                            "-u", "-b", OFFER, "-l", "1200", "-t", str(SECONDS), "-J"],
                           capture_output=True, text=True, timeout=60)
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert p.returncode == 0, p.stdout[-800:] + p.stderr[-400:]
    return json.loads(p.stdout)


def measured(rtr: str, ifb: str, minor: int, fn) -> tuple[float, int]:
    """(bit/s the class let out, its drops) over the interval ``fn`` ran plus the queue's drain."""
    b0, d0 = class_bytes(rtr, ifb, minor)
    t0 = time.monotonic()
    fn()
    wait_for(lambda: "backlog 0b" in sh("ip", "netns", "exec", rtr, "tc", "-s", "qdisc", "show", "dev", ifb,
                                        "parent", f"1:{minor:x}"), 10, what="the queue to drain")
    t1 = time.monotonic()
    b1, d1 = class_bytes(rtr, ifb, minor)
    return (b1 - b0) * 8 / (t1 - t0), d1 - d0


@root
@pytest.mark.skipif(not __import__("shutil").which("iperf3"), reason="iperf3 not installed")
def test_real_uploads_are_capped(tmp_path, topo):
    cust, rtr, _ = topo
    pol = copy_policies(tmp_path)
    em = pol / "emergency.yaml"
    data = yaml.safe_load(em.read_text())
    data["interfaces"] = [{"name": "nocp-down0", "rate": RATE}]
    em.write_text(yaml.safe_dump(data, allow_unicode=True))
    cu = pol / "customers.yaml"
    data = yaml.safe_load(cu.read_text())
    for p in data["plans"]:
        if p["id"] == "home-100m":
            p["up"] = "1mbit"
    cu.write_text(yaml.safe_dump(data, allow_unicode=True))
    d = DaemonProcess(tmp_path, policies=pol, extra_args=["--enforce", "linux", "--netns", rtr]).start()
    try:
        dirs = d.ctl_json("usage")["directions"]
        assert dirs["download"] == "enforced" and dirs["upload"].startswith("enforced (ifb, u32 redirect")
        ifb = ifb_name("nocp-down0")
        _, found = parse_filters(sh("ip", "netns", "exec", rtr, "tc", "filter", "show", "dev", ifb, "parent", "1:"))
        minor = dict(found)["192.0.2.0/26"]
        capped, drops = measured(rtr, ifb, minor, lambda: upload(cust, "192.0.2.2", 5301))
        # the default class carries the uncapped customer's upload, measured the same way
        free, _ = measured(rtr, ifb, 0x31, lambda: upload(cust, "192.0.2.66", 5302))
        up = {c["customer"]: c["bytes"] for c in d.ctl_json("usage")["customers_up"]}
        assert up["c1001"] >= CAP_BPS / 8 * SECONDS * 0.5, up    # usage counts the capped upload
        assert "upload caps: enforced (ifb, u32 redirect" in d.ctl("usage", check=True).stdout
    finally:
        d.stop()
    print(f"upload: capped customer {capped / 1e6:.3f} Mbit/s ({drops} drops), uncapped {free / 1e6:.3f} Mbit/s")
    assert capped <= CAP_BPS * 1.15, f"capped upload let out at {capped / 1e6:.2f} Mbit/s (cap 1)"
    assert capped >= CAP_BPS * 0.5 and drops > 0, f"{capped / 1e6:.2f} Mbit/s, {drops} drops: the cap was not reached"
    assert free >= 2 * CAP_BPS, f"the uncapped upload got only {free / 1e6:.2f} Mbit/s through the same router"
