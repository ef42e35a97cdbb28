"""List formats, the matcher, the pure verdict, longest-prefix match and list sources."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import multiprocessing
import random
import threading
from pathlib import Path

import pytest

from dns_fixtures import MALTRAIL, RPZ
from nocpolicy.dns.formats import parse, parse_domains, parse_hosts, parse_maltrail, parse_rpz
from nocpolicy.dns.lists import CompiledList, DomainIndex, ListSet, normalize, suffixes
from nocpolicy.dns.sources import ListManager
from nocpolicy.dns.verdict import Subscriber, explain, judge
from nocpolicy.policy.dnsconf import BlockList
from nocpolicy.store import Store
from nocpolicy.subscribers.prefixes import PrefixIndex


def m(index: DomainIndex, name: str):
    hit = index.match(suffixes(normalize(name)))
    return hit.entry if hit else None


def test_domains_cover_subdomains_case_and_trailing_dot():
    idx, rep = parse_domains("# c\nEvil.Example.\n*.wild.example\n.dot.example\nbad name\n10.1.2.3\nbücher.example\n")
    assert m(idx, "evil.example") == "evil.example"
    assert m(idx, "A.B.EVIL.example.") == "evil.example"
    assert m(idx, "notevil.example") is None
    assert m(idx, "wild.example") == "wild.example"
    assert m(idx, "xn--bcher-kva.example") == "xn--bcher-kva.example"       # IDN in A-label form
    assert rep.skipped == {"invalid": 1, "ip": 1}


def test_hosts_entries_are_exact():
    idx, rep = parse_hosts("127.0.0.1 localhost\n0.0.0.0 ads.example tracker.example # x\n::1 ip6-localhost\n")
    assert m(idx, "ads.example") == "ads.example" and m(idx, "TRACKER.example") == "tracker.example"
    assert m(idx, "sub.ads.example") is None and m(idx, "localhost") is None
    assert rep.entries == 2


def test_rpz_semantics_and_actions():
    idx, rep = parse_rpz(RPZ)
    sfx = lambda n: suffixes(normalize(n))  # noqa: E731
    assert idx.match(sfx("rpz-exact.example")).action == "nxdomain"
    assert idx.match(sfx("sub.rpz-exact.example")) is None
    assert idx.match(sfx("rpz-wild.example")) is None                 # *.x does not cover x
    assert idx.match(sfx("a.rpz-wild.example")).entry == "*.rpz-wild.example"
    assert idx.match(sfx("a.pass.rpz-wild.example")) is None          # more specific passthru wins
    assert idx.match(sfx("nodata.example")).action == "nodata"
    assert idx.match(sfx("sink.example")).action == "sinkhole:10.9.9.9"
    assert rep.skipped.get("unsupported") == 1                         # rpz-ip trigger


def test_maltrail_stand_in_shapes():
    idx, rep = parse_maltrail("# x\n1.2.3.4:80\nevil.example:8080\nhttp://a.example/x\nb.example/p.php\n"
                              "  c.example\n/x.php\n[2001:db8::1]:80\n")
    assert m(idx, "evil.example") and m(idx, "www.c.example") and m(idx, "a.example") is None
    assert rep.entries == 2 and rep.skipped == {"ip": 2, "url": 3}


@pytest.mark.skipif(not (MALTRAIL / "emotet.txt").exists(), reason="shared/data/maltrail not present in this checkout")
def test_real_maltrail_files():
    files = sorted(MALTRAIL.glob("*.txt"))
    assert len(files) >= 10
    total = 0
    for f in files:
        text = f.read_text(errors="replace")
        idx, rep = parse_maltrail(text)
        total += rep.entries
        assert rep.skipped.get("invalid", 0) <= 0.01 * max(1, rep.entries), (f.name, rep.as_dict())
        # every bare-domain line of the file is matched
        for line in text.splitlines()[:400]:
            s = line.strip().lower()
            if s and not s.startswith("#") and "/" not in s and ":" not in s and not s[-1].isdigit():
                assert m(idx, s) == s.rstrip("."), (f.name, s)
    emotet, _ = parse_maltrail((MALTRAIL / "emotet.txt").read_text())
    assert m(emotet, "www.bardubar.com") == "bardubar.com"
    assert m(emotet, "66.210.228.178") is None
    assert total > 50_000


def _lists():
    def cl(id, cls, text, fmt="domains", action="nxdomain", allow=()):
        idx, _ = parse(fmt, text)
        return CompiledList(id, cls, action, idx, DomainIndex(subtree=set(allow)))
    return ListSet.of([cl("m", "mandatory", "both.example\nm.example\n"),
                       cl("s", "security", "both.example\ns.example\n", allow=["ok.s.example"]),
                       cl("o", "optional", "o.example\ns.example\n", action="refused")])


def test_verdict_order_and_optout():
    ls = _lists()
    home = Subscriber("c1")
    out = Subscriber("c2", security=False)
    optin = Subscriber("c3", optional=frozenset({"o"}))
    assert judge(home, ls, "both.example").list == "m"                # mandatory first
    assert judge(out, ls, "both.example").list == "m"                 # opt-out never lifts mandatory
    assert judge(home, ls, "x.s.example").cls == "security"
    assert not judge(out, ls, "s.example").blocked
    assert not judge(home, ls, "ok.s.example").blocked                # allow exception
    assert judge(home, ls, "sub.ok.s.example").blocked is False
    assert not judge(home, ls, "o.example").blocked                   # optional needs opt-in
    v = judge(optin, ls, "O.Example.")
    assert (v.action, v.list, v.ede, v.entry) == ("refused", "o", 17, "o.example")
    assert judge(Subscriber(None, refuse=True), ls, "anything.example").action == "refused"
    assert judge(home, ls, "m.example").ede == 16 and judge(home, ls, "s.example").ede == 15


def test_explain_lists_every_match():
    e = explain(Subscriber("c2", security=False), _lists(), "both.example")
    assert [(r["list"], r["applies"]) for r in e["matches"]] == [("m", True), ("s", False)]
    assert e["verdict"]["list"] == "m"
    e = explain(Subscriber("c1"), _lists(), "ok.s.example")
    assert e["matches"][0]["allowed_by"] == "ok.s.example" and not e["verdict"]["blocked"]


def test_longest_prefix_match_100k_prefixes():
    rnd = random.Random(7)
    items = []
    for i in range(100_000):
        if i % 4:
            plen = rnd.choice((24, 26, 28, 30, 32))
            net = ipaddress.ip_network((rnd.getrandbits(32) >> (32 - plen) << (32 - plen), plen))
        else:
            plen = rnd.choice((48, 56, 64))
            net = ipaddress.ip_network((rnd.getrandbits(128) >> (128 - plen) << (128 - plen), plen))
        items.append((net, f"c{i}"))
    items.append((ipaddress.ip_network("10.0.0.0/8"), "outer"))
    items.append((ipaddress.ip_network("10.1.0.0/16"), "inner"))
    idx = PrefixIndex(items)
    assert idx.size == len({n for n, _ in items})
    assert idx.lookup("10.1.2.3") == "inner" and idx.lookup("10.2.0.1") == "outer"
    assert idx.lookup("::ffff:10.1.2.3") == "inner"
    assert idx.lookup("not an ip") is None
    owner = {n: c for n, c in items}                  # the last claim wins, in the index too
    for net, _ in rnd.sample(items[:-2], 300):
        host = net.network_address + (net.num_addresses - 1)
        bits = 32 if net.version == 4 else 128
        want = next(owner[n] for n in (ipaddress.ip_network(f"{host}/{p}", strict=False)
                                       for p in range(bits, -1, -1)) if n in owner)
        assert idx.lookup(str(host)) == want


def _bl(source, **kw):
    return BlockList(id="feed", cls="security", format="domains", source=source, **kw)


async def test_sources_shrink_guard_last_good_copy_and_runtime_additions(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    pol = tmp_path / "pol"
    pol.mkdir()
    src = pol / "feed.txt"
    src.write_text("".join(f"d{i}.example\n" for i in range(100)))
    mgr = ListManager(store, str(tmp_path / "state"))
    lst = await mgr.build(_bl("feed.txt", max_shrink=0.5), str(pol))
    mgr.adopt([_bl("feed.txt", max_shrink=0.5)], {"feed": lst})
    assert len(lst.index) == 100 and mgr.states["feed"].last_success
    mgr.update(lst, ["runtime.example"], [], actor="test", reason="feed")
    assert lst.match(suffixes("x.runtime.example"))
    src.write_text("".join(f"d{i}.example\n" for i in range(10)))   # shrinks by 90%: refused
    again = await mgr.build(_bl("feed.txt", max_shrink=0.5), str(pol))
    mgr.adopt([_bl("feed.txt", max_shrink=0.5)], {"feed": again})
    assert again is lst and "shrink" in mgr.states["feed"].last_error and mgr.states["feed"].failures == 1
    src.write_text("".join(f"d{i}.example\n" for i in range(80)))   # -20%: accepted, runtime entry kept
    new = await mgr.build(_bl("feed.txt", max_shrink=0.5), str(pol))
    mgr.adopt([_bl("feed.txt", max_shrink=0.5)], {"feed": new})
    assert len(new.index) == 81 and new.match(suffixes("runtime.example"))
    src.unlink()                                                      # source gone: a new manager
    mgr2 = ListManager(store, str(tmp_path / "state"))               # (restart) uses the last good copy
    lst2 = await mgr2.build(_bl("feed.txt"), str(pol))
    mgr2.adopt([_bl("feed.txt")], {"feed": lst2})
    assert len(lst2.index) == 81 and mgr2.states["feed"].from_copy and mgr2.states["feed"].failures == 1
    store.close()


async def test_refused_policy_leaves_no_half_applied_list_state(tmp_path):
    """prepare() builds, another component refuses the policy, commit never runs: a retry
    must still see the new file (not "unchanged, keep the old list")."""
    store = Store(tmp_path / "db.sqlite")
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "feed.txt").write_text("old.example\n")
    mgr = ListManager(store, str(tmp_path / "state"))
    first = await mgr.build(_bl("feed.txt"), str(pol))
    mgr.adopt([_bl("feed.txt")], {"feed": first})
    (pol / "feed.txt").write_text("old.example\nnew.example\n")
    await mgr.build(_bl("feed.txt"), str(pol))                 # prepared, never committed
    assert mgr.compiled["feed"] is first and mgr.states["feed"].entries == 1
    retry = await mgr.build(_bl("feed.txt"), str(pol))
    assert retry is not first and retry.match(suffixes("new.example"))
    store.close()


async def test_http_source(tmp_path):
    body = b"http-a.example\nhttp-b.example\n"

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/list.txt":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        store = Store(tmp_path / "db.sqlite")
        mgr = ListManager(store, str(tmp_path / "state"))
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        lst = await mgr.build(_bl(url + "/list.txt"), str(tmp_path))
        assert len(lst.index) == 2
        bad = await ListManager(store, str(tmp_path / "state2")).build(_bl(url + "/missing"), str(tmp_path))
        assert len(bad.index) == 0
        store.close()
    finally:
        srv.shutdown()
        srv.server_close()


def _build_many(state: str, pol: str, n: int, i: int, barrier, failures) -> None:
    """One --workers process: reload the same list n times into the shared state directory."""
    store = Store(Path(state) / f"db-{i}.sqlite")
    mgr = ListManager(store, state)
    own = Path(pol) / f"w{i}"                    # its own policy files, the same list id "feed"
    own.mkdir()
    barrier.wait()
    try:
        for k in range(n):
            (own / "feed.txt").write_text(f"w{i}-{k}.example\nshared.example\n")
            asyncio.run(mgr.build(_bl("feed.txt"), str(own)))
    except Exception as exc:                     # noqa: BLE001 - reported to the parent
        failures.put(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()


def test_worker_processes_saving_the_same_list_copy_at_once_all_succeed(tmp_path):
    """--workers processes reload together and each saves the last-good copy of the same list
    in the shared state directory: none of them may fail (one refused the reload in CI)."""
    ctx = multiprocessing.get_context("fork")
    pol, state = tmp_path / "pol", tmp_path / "state"
    pol.mkdir()
    state.mkdir()
    barrier, failures = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_build_many, args=(str(state), str(pol), 40, i, barrier, failures))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == []
    copy = (state / "dns-lists" / "feed.txt").read_text()
    assert "shared.example" in copy and not list((state / "dns-lists").glob("*.tmp"))
