"""Query-log files followed like tail -F: unbound and BIND formats, rename+create and copytruncate."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap

import pytest

from helpers import wait_for
from nocpolicy.detect.follow import Follower
from nocpolicy.detect.logformats import parse_bind, parse_unbound

UNBOUND_HIT = "[1764064800] unbound[4242:0] info: 127.0.0.2 cc.example.test. A IN\n"
UNBOUND_SUB = "Nov 25 10:00:00 unbound[4242:0] info: 127.0.0.2 Deep.CC.example.test. AAAA IN\n"
UNBOUND_BENIGN = "[1764064800] unbound[4242:0] info: 127.0.0.2 www.example.test. A IN\n"
UNBOUND_REPLY = "[1764064800] unbound[4242:0] info: 127.0.0.2 cc.example.test. A IN NOERROR 0.000000 0 45\n"
BIND_HIT = ("25-Nov-2026 10:00:00.123 queries: info: client @0x7f2b1c0a1b68 127.0.0.4#53211 "
            "(cc.example.test): query: cc.example.test IN A +E(0)K (127.0.0.1)\n")
BIND_OPTED_OUT = ("25-Nov-2026 10:00:01.000 client 127.0.0.3#40000 (cc.example.test): view inside: "
                  "query: cc.example.test IN A + (127.0.0.1)\n")
BIND_MANDATORY = ("25-Nov-2026 10:00:02.000 queries: info: client @0x1 127.0.0.3#40001 (csam.example.test): "
                  "query: csam.example.test IN AAAA -E(0)D (127.0.0.1)\n")


# --- line formats ----------------------------------------------------------------------

def test_unbound_lines():
    q = parse_unbound(UNBOUND_HIT)
    assert (q.client, q.name, q.qtype, q.reply) == ("127.0.0.2", "cc.example.test", 1, False)
    q = parse_unbound(UNBOUND_SUB)
    assert (q.name, q.qtype) == ("deep.cc.example.test", 28)
    assert parse_unbound(UNBOUND_REPLY).reply is True
    q = parse_unbound("Nov 25 10:00:00 host unbound: [99:1] info: 2001:db8::5 x.test. TYPE65534 IN")
    assert (q.client, q.name, q.qtype) == ("2001:db8::5", "x.test", 65534)
    assert parse_unbound("[1] unbound[1:0] info: start of service (unbound 1.17.1).") is None
    assert parse_unbound("[1] unbound[1:0] info: not-an-ip cc.example. A IN") is None


def test_bind_lines():
    q = parse_bind(BIND_HIT)
    assert (q.client, q.name, q.qtype) == ("127.0.0.4", "cc.example.test", 1)
    q = parse_bind(BIND_OPTED_OUT)
    assert (q.client, q.name) == ("127.0.0.3", "cc.example.test")
    assert parse_bind(BIND_MANDATORY).qtype == 28
    q = parse_bind("client @0x1 fe80::1%eth0#5353 (a.test): query: a.test IN A + (::1)")
    assert q.client == "fe80::1"
    assert parse_bind("25-Nov-2026 10:00:00 general: info: zone loaded") is None


# --- the follower ------------------------------------------------------------------------

def test_follower_rotations(tmp_path):
    path = tmp_path / "q.log"
    path.write_text("old 1\nold 2\n")
    f = Follower(str(path))
    assert f.poll() == []                       # started at the end: history is not replayed
    with open(path, "a") as w:
        w.write("a\nb")
    assert f.poll() == ["a"]                    # the partial line waits for its newline
    with open(path, "a") as w:
        w.write("\nc\n")
    assert f.poll() == ["b", "c"]

    # rename + create; the writer still appends to the renamed file until it reopens
    os.rename(path, tmp_path / "q.log.1")
    with open(tmp_path / "q.log.1", "a") as w:
        w.write("late\n")
    assert f.poll() == ["late"]                 # name missing: the old file is still followed
    with open(tmp_path / "q.log.1", "a") as w:
        w.write("later\n")
    path.write_text("new 1\n")
    assert f.poll() == ["later", "new 1"]       # old file finished first, then the new one whole
    assert f.rotations == 1

    # copytruncate
    with open(path, "a") as w:
        w.write("new 2\nnew 3\n")
    assert f.poll() == ["new 2", "new 3"]
    shutil.copy(path, tmp_path / "q.log.2")
    with open(path, "r+") as w:
        w.truncate(0)
    with open(path, "a") as w:
        w.write("t1\n")
    assert f.poll() == ["t1"]
    assert f.truncations == 1
    assert f.poll() == []
    # truncated and regrown past the old position before the next poll
    with open(path, "r+") as w:
        w.truncate(0)
    with open(path, "a") as w:
        w.write("a much longer line than before\n")
    assert f.poll() == ["a much longer line than before"]
    assert f.truncations == 2
    f.close()


def test_follower_file_created_later(tmp_path):
    path = tmp_path / "late.log"
    f = Follower(str(path))
    assert f.poll() == []
    path.write_text("first\n")
    assert f.poll() == ["first"]                # a file that appears later is read whole
    f.close()


# --- through the daemon -------------------------------------------------------------------

def write_policy(root, unbound_log, bind_log):
    pol = root / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "lists" / "mandatory.txt").write_text("csam.example.test\n")
    (pol / "lists" / "cc.txt").write_text("cc.example.test\n")
    (pol / "customers.yaml").write_text(textwrap.dedent("""\
        customers:
          - {id: cust-a, name: A, prefixes: [127.0.0.2/32]}
          - {id: cust-b, name: B, prefixes: [127.0.0.3/32], security_optout: true}
          - {id: cust-c, name: C, prefixes: [127.0.0.4/32]}
        """))
    (pol / "dns.yaml").write_text(textwrap.dedent("""\
        dns:
          lists:
            - {id: mandatory, class: mandatory, source: lists/mandatory.txt}
            - {id: cc, class: security, source: lists/cc.txt}
        """))
    (pol / "detect.yaml").write_text(textwrap.dedent(f"""\
        detect:
          logfiles:
            - {{path: {unbound_log}, format: unbound}}
            - {{path: {bind_log}, format: bind}}
          enforce: [events]
        """))
    return pol


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


@pytest.fixture
def logs_daemon(tmp_path, daemon):
    ub, named = tmp_path / "unbound.log", tmp_path / "named.log"
    ub.write_text(UNBOUND_HIT * 3)           # history before the daemon starts: never counted
    named.write_text("")
    d = daemon(policies=write_policy(tmp_path, ub, named))
    wait_for(lambda: len(d.ctl_json("detect", "status")["inputs"]["logfiles"]) == 2, 10,
             what="log files followed")
    return d, ub, named, tmp_path


def count(d, lst="cc", cls="security"):
    return d.metric("nocpolicy_detections_total", {"source": "logfile", "list": lst, "class": cls}) or 0.0


def test_logfile_detections_survive_rotation(logs_daemon):
    d, ub, named, tmp = logs_daemon
    append(ub, UNBOUND_HIT + UNBOUND_BENIGN + "garbage line\n" + UNBOUND_SUB)
    wait_for(lambda: count(d) == 2, 10, what="two detections from the unbound log")

    # logrotate default: rename, the resolver writes once more to the old file, then create
    os.rename(ub, tmp / "unbound.log.1")
    append(tmp / "unbound.log.1", UNBOUND_HIT)
    wait_for(lambda: count(d) == 3, 10, what="the late line in the renamed file")
    ub.write_text(UNBOUND_HIT)
    wait_for(lambda: count(d) == 4, 10, what="the line in the re-created file")

    # copytruncate
    shutil.copy(ub, tmp / "unbound.log.2")
    with open(ub, "r+") as f:
        f.truncate(0)
    append(ub, UNBOUND_SUB)
    wait_for(lambda: count(d) == 5, 10, what="the line after copytruncate")

    # BIND: cust-c detected; the opted-out cust-b only for the mandatory list
    append(named, BIND_HIT + BIND_OPTED_OUT + BIND_MANDATORY)
    wait_for(lambda: count(d, "mandatory", "mandatory") == 1, 10, what="the mandatory hit from BIND")
    wait_for(lambda: count(d) == 6, 10, what="cust-c's hit from BIND")
    rows = wait_for(lambda: d.ctl_json("detections", "--customer", "cust-b")["detections"], 10,
                    what="cust-b's detection")
    assert [(r["list"], r["source"]) for r in rows] == [("mandatory", "logfile")]
    assert sum(r["count"] for r in d.ctl_json("detections", "--customer", "cust-a")["detections"]) == 5
    st = d.ctl_json("detect", "status")["inputs"]["logfiles"]
    unb = next(x for x in st if x["format"] == "unbound")
    assert unb["rotations"] == 1 and unb["truncations"] == 1 and unb["unparsed"] >= 1
    # no detection is lost or doubled: the final count is exact
    assert count(d) == 6
    text = d.metrics()
    assert 'nocpolicy_detect_observed_total{source="logfile"} 9.0' in text
    assert 'nocpolicy_detect_input_errors_total{source="logfile"} 1.0' in text
    if shutil.which("promtool"):
        res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=30)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr
