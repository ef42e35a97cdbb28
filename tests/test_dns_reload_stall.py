"""List reloads while serving (issue 19's reload test): the list is parsed in a child process,
the new index is built and the old one freed on the event loop a slice at a time, and
answers stay right across the swap."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import threading
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, wait_for
from nocpolicy.dns import listbuild, sources
from nocpolicy.dns.formats import parse
from nocpolicy.dns.lists import DomainIndex, NameSet
from nocpolicy.dns.sources import ListManager
from nocpolicy.gcpause import freeze_start_up
from nocpolicy.policy.dnsconf import BlockList
from nocpolicy.store import Store

BIG = Path(__file__).resolve().parents[2] / "shared" / "data" / "maltrail" / "all-domains.txt.gz"

SAMPLES = {
    "domains": "# c\nEvil.Example.\n*.wild.example\n.dot.example\nbad name here\nxn--bcher-kva.example\n",
    "hosts": "0.0.0.0 ads.example tracker.example # c\n127.0.0.1 localhost\nnonsense\n",
    "rpz": ("$ORIGIN rpz.\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n"
            "evil.example CNAME .\n*.wild.example CNAME *.\nok.wild.example CNAME rpz-passthru.\n"
            "sink.example A 10.0.0.1\n32.1.0.0.127.rpz-ip CNAME .\n"),
    "maltrail": "# trail\nc2.example\nhost.example:8080\nhttp://x.example/path\n10.1.2.3\n",
}


def same_index(a: DomainIndex, b: DomainIndex) -> bool:
    return (set(a.subtree) == set(b.subtree) and a.subtree.parents == b.subtree.parents
            and a.exact == b.exact and a.wild == b.wild)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_child_parse_equals_in_process_parse(tmp_path, fmt):
    path = tmp_path / "list.txt"
    path.write_text(SAMPLES[fmt])
    idx, report = asyncio.run(listbuild.parse_in_child(fmt, str(path)))
    ref, ref_report = parse(fmt, SAMPLES[fmt])
    assert len(ref) > 0
    assert same_index(idx, ref)
    assert report == ref_report.as_dict()


def test_child_parse_of_the_big_list_equals_in_process_parse(tmp_path):
    if not BIG.exists():
        pytest.skip("shared Maltrail data absent")
    text = gzip.open(BIG, "rt").read()
    lines = text.splitlines()[:200_000]
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n")
    idx, report = asyncio.run(listbuild.parse_in_child("maltrail", str(path)))
    ref, ref_report = parse("maltrail", "\n".join(lines) + "\n")
    assert len(idx) > 150_000
    assert same_index(idx, ref) and report == ref_report.as_dict()


def test_child_failure_is_reported_not_swallowed(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.example\n")
    with pytest.raises(listbuild.ChildFailed, match="list parser failed"):
        asyncio.run(listbuild.parse_in_child("no-such-format", str(path)))


def test_reload_falls_back_to_the_thread_when_the_child_cannot_run(tmp_path, monkeypatch):
    (tmp_path / "l.txt").write_text("one.example\ntwo.example\n")
    bl = BlockList(id="l", cls="security", format="domains", source="l.txt")
    store = Store(tmp_path / "db.sqlite")
    mgr = ListManager(store, str(tmp_path / "state"))
    monkeypatch.setattr(listbuild.sys, "executable", "/bin/false")    # the child exits at once, no output
    monkeypatch.setattr(sources, "CHILD_MIN_BYTES", 0)                # a child even for two names

    async def go():
        try:
            return await mgr.build(bl, str(tmp_path), background=True)
        finally:
            mgr.close()
    lst = asyncio.run(go())
    store.close()
    assert set(lst.index.subtree) == {"one.example", "two.example"}
    assert not list((tmp_path / "state" / "dns-lists").glob("*.parse"))     # the hand-over file is gone


def test_old_lists_are_freed_on_the_loop_between_other_work():
    idx = DomainIndex(subtree=NameSet(f"n{i}.example" for i in range(50_000)),
                      exact={f"e{i}.example": None for i in range(5_000)})
    ticks = 0
    done = False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    async def go():
        nonlocal done
        t = asyncio.create_task(ticker())
        freed = await listbuild.free_on_loop([idx], budget=0.0)   # yield after every slice
        done = True
        await t
        return freed
    freed = asyncio.run(go())
    assert freed == 55_000
    assert len(idx) == 0 and idx.subtree.parents is None
    assert ticks >= 50_000 // 256          # the loop ran other work between the slices


def test_start_up_objects_are_frozen():
    try:
        n = freeze_start_up()
        assert n > 1000 and gc.get_freeze_count() == n
    finally:
        gc.unfreeze()


@pytest.fixture
def reloading(tmp_path):
    ub = Unbound(tmp_path, ["www.example.org. 300 IN A 192.0.2.80"]).start()
    pol = dns_policy(tmp_path, ub.port)
    names = [f"c2-{i}.bulk.example" for i in range(60_000)]
    (pol / "lists" / "cc-maltrail.txt").write_text("\n".join(names) + "\ngone.example\n")
    trace = tmp_path / "lag.trace"
    d = DaemonProcess(tmp_path, policies=pol, env={"NOCPOLICY_LAG_TRACE": str(trace)})
    d.start()
    yield d, pol, names, trace
    d.stop()
    ub.stop()


def test_answers_stay_right_across_a_reload(reloading):
    d, pol, names, trace = reloading
    assert d.ctl("reload", check=True).returncode == 0
    bad: list[str] = []
    seen = {"blocked": 0}
    stop = threading.Event()

    def prober():
        i = 0
        while not stop.wait(0.005) and len(bad) < 20:     # < 200 qps: under blocked_qps (500/s)
            name = names[i % len(names)]          # listed before and after: always blocked
            i += 1
            try:
                r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=d.dns_port, timeout=5)
            except Exception as exc:       # noqa: BLE001 (any failure is a wrong answer here)
                bad.append(f"{name}: {exc!r}")
                continue
            if r.rcode() != dns.rcode.NXDOMAIN:
                bad.append(f"{name}: {dns.rcode.to_text(r.rcode())}")
            seen["blocked"] += 1

    th = threading.Thread(target=prober)
    th.start()
    try:
        wait_for(lambda: seen["blocked"] >= 20, 30, what="probes before the reload")
        (pol / "lists" / "cc-maltrail.txt").write_text("\n".join(names) + "\nnew-c2.example\n")
        out = d.ctl("--json", "reload", check=True)
        assert json.loads(out.stdout)["ok"], out.stdout
        wait_for(lambda: "free old lists done" in (trace.read_text() if trace.exists() else ""), 60,
                 what="the old list freed")
        before = seen["blocked"]
        wait_for(lambda: seen["blocked"] >= before + 20, 30, what="probes after the reload")
    finally:
        stop.set()
        th.join(30)
    assert not bad, bad
    text = trace.read_text()
    assert "child parse done" in text            # parsed by the child process, not in a thread
    assert "frozen 0 " not in text               # start-up objects frozen before serving

    def rcode(name):
        q = dns.message.make_query(name, "A")
        return dns.query.udp(q, "127.0.0.1", port=d.dns_port, timeout=5).rcode()
    assert rcode("new-c2.example") == dns.rcode.NXDOMAIN

    def listed(name):
        out = d.ctl("--json", "explain", "--client", "127.0.0.1", "--name", name, check=True).stdout
        return json.loads(out)
    assert "cc" in json.dumps(listed("new-c2.example"))
    assert "cc" not in json.dumps(listed("gone.example"))          # dropped from the new copy
    lists = json.loads(d.ctl("--json", "lists", check=True).stdout)["lists"]
    cc = next(x for x in lists if x["list"] == "cc")
    assert cc["entries"] == len(names) + 1 and cc["last_error"] is None
