"""The answer cache end to end: a real nocpolicyd in front of a real unbound.

What a user relies on: TTLs count down, negative answers are cached for the SOA
minimum, DO/CD/EDNS queries do not share entries, the client's ID and letter case
come back, blocking stays per customer over shared entries (both ways, CNAMEs too,
list and consent changes at once), stale answers while the upstream is down and
recovery, prefetch of hot names, flush, bounded memory, and every cached answer
equal to what the upstream says (hypothesis).
"""

from __future__ import annotations

import json
import tracemalloc
import urllib.request

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, udp_exchange, wait_for

LOCAL = [
    "www.example.org. 300 IN A 192.0.2.80",
    "multi.example.org. 300 IN A 192.0.2.1",
    "multi.example.org. 300 IN A 192.0.2.2",
    "multi.example.org. 200 IN AAAA 2001:db8::1",
    "multi.example.org. 100 IN TXT hello-world",
    "multi.example.org. 300 IN MX 10 mail.example.org.",
    "mail.example.org. 300 IN A 192.0.2.25",
    "www.bardubar.com. 300 IN A 192.0.2.66",
    "sub2.bardubar.com. 300 IN A 192.0.2.67",
    "alias.example.org. 300 IN CNAME www.bardubar.com.",
    "alias2.example.org. 300 IN CNAME sub2.bardubar.com.",
    "alias3.example.org. 300 IN CNAME target3.example.org.",
    "target3.example.org. 300 IN A 192.0.2.33",
    "optalias.example.org. 300 IN CNAME www.bardubar.com.",
    "flush.example.org. 300 IN A 192.0.2.90",
    "a.flush.example.org. 300 IN A 192.0.2.91",
    "keep.example.org. 300 IN A 192.0.2.92",
    "hot.example.org. 300 IN A 192.0.2.95",
]
NEG_ZONE = """\
    local-zone: "neg.example." static
    local-data: "neg.example. 600 IN SOA ns.neg.example. host.neg.example. 1 3600 600 86400 20"
    local-data: "there.neg.example. 300 IN A 192.0.2.44"
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnscache")
    ub = Unbound(tmp, LOCAL, extra=NEG_ZONE).start()
    d = DaemonProcess(tmp, policies=dns_policy(tmp, ub.port)).start()
    yield d, ub
    d.stop()
    ub.stop()


def ask(port, name, rdtype="A", source="127.0.0.1", edns=0, do=False, cd=False, size=1232):
    q = dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=do, payload=size)
    if cd:
        q.flags |= dns.flags.CD
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=3, source=source)


def ede(r) -> list[int]:
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def counters(d) -> dict:
    return d.ctl_json("cache", "show")["total"]


def ttl_of(r) -> int:
    return min(rr.ttl for rr in r.answer + r.authority)


def test_ttl_counts_down_and_the_upstream_is_asked_once(env):
    d, _ = env
    first = ask(d.dns_port, "www.example.org")
    assert first.answer[0].ttl == 300
    before = counters(d)
    wait_for(lambda: ask(d.dns_port, "www.example.org").answer[0].ttl < 300, 10, what="TTL below 300")
    later = ask(d.dns_port, "www.example.org")
    assert 290 <= later.answer[0].ttl < 300 and [str(x) for x in later.answer[0]] == ["192.0.2.80"]
    after = counters(d)
    assert after["misses"] == before["misses"] and after["hits"] >= before["hits"] + 2
    assert d.metric("nocpolicy_dns_cache_hits_total") >= after["hits"]


def test_negative_answers_cached_for_the_soa_minimum(env):
    d, _ = env
    r = ask(d.dns_port, "nothere.neg.example")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].rdtype == dns.rdatatype.SOA
    before = counters(d)
    r2 = ask(d.dns_port, "nothere.neg.example")
    assert r2.rcode() == dns.rcode.NXDOMAIN and r2.authority[0].ttl <= 20    # min(SOA TTL, MINIMUM)
    nodata = ask(d.dns_port, "there.neg.example", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    ask(d.dns_port, "there.neg.example", "AAAA")
    after = counters(d)
    assert after["hits"] == before["hits"] + 2 and after["misses"] == before["misses"] + 1
    # NXDOMAIN without an SOA (RFC 2308 5): never cached, every query goes upstream
    for _ in range(2):
        assert ask(d.dns_port, "no-soa.invalid-zone").rcode() == dns.rcode.NXDOMAIN
    assert counters(d)["misses"] == after["misses"] + 2


def test_do_cd_and_edns_do_not_share_entries(env):
    d, _ = env
    shapes = [dict(edns=-1), dict(edns=0), dict(edns=0, do=True), dict(edns=-1, cd=True), dict(edns=0, size=4096)]
    for _ in range(2):                       # second round: every shape from its own entry
        for kw in shapes:
            r = ask(d.dns_port, "mail.example.org", **kw)
            assert bool(r.flags & dns.flags.CD) == bool(kw.get("cd"))
            assert (r.edns >= 0) == (kw["edns"] >= 0)
            assert bool(r.ednsflags & dns.flags.DO) == bool(kw.get("do"))
    entries = d.ctl_json("cache", "show", "mail.example.org")["entries"]
    got = sorted((e["edns"], e["do"], e["cd"], e["udp_size"] or 0) for e in entries)
    assert got == sorted([(False, False, False, 0), (True, False, False, 1232), (True, True, False, 1232),
                          (False, False, True, 0), (True, False, False, 4096)])


def test_id_and_letter_case_restored(env):
    d, _ = env
    ask(d.dns_port, "multi.example.org", "TXT")
    for qid, name in ((0x1234, b"\x05MuLtI\x07ExAmPlE\x03oRg\x00"), (0xBEEF, b"\x05multi\x07example\x03org\x00")):
        q = qid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x10\x00\x01"
        r = udp_exchange(d.dns_port, q)
        assert r[:2] == q[:2] and r[12:len(q)] == q[12:]
        msg = dns.message.from_wire(r)
        assert [str(x) for x in msg.answer[0]] == ['"hello-world"']


def test_shared_entries_blocked_for_the_protected_customer_first(env):
    d, _ = env
    r = ask(d.dns_port, "sub2.bardubar.com", source="127.0.0.1")       # protected: blocked, nothing cached
    assert r.rcode() == dns.rcode.NXDOMAIN and ede(r) == [15]
    r = ask(d.dns_port, "sub2.bardubar.com", source="127.0.0.2")       # opted out: the upstream's answer
    assert [str(x) for x in r.answer[0]] == ["192.0.2.67"]
    before = counters(d)
    r = ask(d.dns_port, "sub2.bardubar.com", source="127.0.0.2")       # ...now from the cache
    assert [str(x) for x in r.answer[0]] == ["192.0.2.67"] and counters(d)["hits"] == before["hits"] + 1
    r = ask(d.dns_port, "sub2.bardubar.com", source="127.0.0.1")       # still blocked for the protected one
    assert r.rcode() == dns.rcode.NXDOMAIN and ede(r) == [15] and not r.answer


def test_shared_cname_entry_judged_per_customer_both_ways(env):
    d, _ = env
    for first, second in (("127.0.0.2", "127.0.0.1"), ("127.0.0.1", "127.0.0.2")):
        name = "alias.example.org" if first == "127.0.0.2" else "alias2.example.org"
        for src in (first, second, first, second):
            r = ask(d.dns_port, name, source=src)
            if src == "127.0.0.1":          # protected: the CNAME target is on the security list
                assert r.rcode() == dns.rcode.NXDOMAIN and ede(r) == [15] and not r.answer
            else:                           # unbound answers the CNAME (local data, no chasing)
                assert r.rcode() == dns.rcode.NOERROR and r.answer[0].rdtype == dns.rdatatype.CNAME
        entry = d.ctl_json("cache", "show", name)["entries"]
        assert len(entry) == 1 and entry[0]["cnames"]


def test_list_and_consent_changes_drop_cname_verdicts(env):
    d, _ = env
    assert [str(x) for x in ask(d.dns_port, "alias3.example.org").answer[0]] == ["target3.example.org."]
    d.ctl("list-update", "cc", "--add", "target3.example.org", "--reason", "test", check=True)
    before = counters(d)
    r = ask(d.dns_port, "alias3.example.org")
    assert r.rcode() == dns.rcode.NXDOMAIN and ede(r) == [15]
    assert counters(d)["misses"] == before["misses"]            # the entry stayed; its verdict did not
    d.ctl("list-update", "cc", "--remove", "target3.example.org", "--reason", "test", check=True)
    assert ask(d.dns_port, "alias3.example.org").rcode() == dns.rcode.NOERROR
    assert ede(ask(d.dns_port, "optalias.example.org")) == [15]
    d.ctl("optout", "on", "c-home", "--reason", "test", check=True)
    try:
        assert ask(d.dns_port, "optalias.example.org").rcode() == dns.rcode.NOERROR
    finally:
        d.ctl("optout", "off", "c-home", "--reason", "test", check=True)
    assert ede(ask(d.dns_port, "optalias.example.org")) == [15]


def test_a_hot_name_added_to_a_list_is_blocked_by_the_next_query(env):
    """An answer served again and again from the cache (the hot table of this second) gives way
    to the block as soon as the list changes, and comes back from the cache when it is lifted."""
    d, _ = env
    for _ in range(3):
        assert [str(x) for x in ask(d.dns_port, "hot.example.org").answer[0]] == ["192.0.2.95"]
    d.ctl("list-update", "cc", "--add", "hot.example.org", "--reason", "test", check=True)
    try:
        r = ask(d.dns_port, "hot.example.org")
        assert r.rcode() == dns.rcode.NXDOMAIN and ede(r) == [15] and not r.answer
    finally:
        d.ctl("list-update", "cc", "--remove", "hot.example.org", "--reason", "test", check=True)
    before = counters(d)
    assert [str(x) for x in ask(d.dns_port, "hot.example.org").answer[0]] == ["192.0.2.95"]
    after = counters(d)
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]


def test_flush_name_and_everything(env):
    d, _ = env
    for n in ("flush.example.org", "a.flush.example.org", "keep.example.org"):
        ask(d.dns_port, n)
    out = d.ctl_json("cache", "flush", "flush.example.org")
    assert out["flushed"] == 2
    before = counters(d)
    ask(d.dns_port, "keep.example.org")
    ask(d.dns_port, "a.flush.example.org")
    after = counters(d)
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1
    # the admin API (what MQTT commands also run): everything
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/cache.flush", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {d.token()}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["flushed"] >= 2
    assert counters(d)["entries"] == 0
    bad = d.ctl("cache", "flush", "not a name")
    assert bad.returncode == 1 and "not a domain name" in bad.stdout + bad.stderr


def test_serve_stale_while_the_upstream_is_down_then_recover(tmp_path):
    ub = Unbound(tmp_path, ["short.example.org. 2 IN A 192.0.2.7"]).start()
    d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, ub.port)).start()
    try:
        assert ask(d.dns_port, "short.example.org").answer[0].ttl == 2
        assert ask(d.dns_port, "short.example.org", edns=-1).answer[0].ttl == 2     # its own entry
        ub.stop()
        wait_for(lambda: ede(ask(d.dns_port, "short.example.org", edns=0)) == [3], 15, what="a stale answer")
        r = ask(d.dns_port, "short.example.org", edns=0)
        assert [str(x) for x in r.answer[0]] == ["192.0.2.7"] and r.answer[0].ttl == 30 and ede(r) == [3]
        r = ask(d.dns_port, "short.example.org", edns=-1)              # no EDNS: no EDE, still TTL 30
        assert r.answer[0].ttl == 30 and r.edns < 0
        r = ask(d.dns_port, "never-cached.example.org", edns=0)
        assert r.rcode() == dns.rcode.SERVFAIL and ede(r) in ([22], [23])
        assert counters(d)["stale_answers"] >= 2
        ub2 = Unbound(tmp_path / "again", ["short.example.org. 2 IN A 192.0.2.8"], port=ub.port)
        ub2.start()
        try:
            wait_for(lambda: [str(x) for x in ask(d.dns_port, "short.example.org", edns=0).answer[0]]
                     == ["192.0.2.8"], 20, what="fresh answers after the upstream came back")
            assert ede(ask(d.dns_port, "short.example.org", edns=0)) == []
        finally:
            ub2.stop()
    finally:
        d.stop()
        ub.stop()


def test_prefetch_keeps_a_hot_name_from_missing(tmp_path):
    ub = Unbound(tmp_path, ["hot.example.org. 20 IN A 192.0.2.10"]).start()
    d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, ub.port)).start()
    try:
        ask(d.dns_port, "hot.example.org")
        misses = counters(d)["misses"]
        ttls: list[int] = []

        def refreshed():                 # a hot name: asked every 0.1 s; the last 2 s are the window
            r = ask(d.dns_port, "hot.example.org")
            assert r.rcode() == dns.rcode.NOERROR and r.answer[0].ttl >= 1
            ttls.append(r.answer[0].ttl)
            return len(ttls) > 1 and ttls[-1] > ttls[-2]       # the TTL went up: refreshed
        wait_for(refreshed, 60, interval=0.1, what="the hot name refreshed before it expired")
        assert min(ttls) >= 1 and counters(d)["misses"] == misses       # it never missed
        assert counters(d)["prefetches"] >= 1 and d.metric("nocpolicy_dns_cache_prefetches_total") >= 1
    finally:
        d.stop()
        ub.stop()


def test_entry_and_byte_bounds(tmp_path):
    names = [f"n{i}.bound.example" for i in range(300)]
    ub = Unbound(tmp_path, [f"{n}. 300 IN A 192.0.2.{i % 250 + 1}" for i, n in enumerate(names)]).start()
    pol = dns_policy(tmp_path, ub.port, extra_lists="  cache:\n    max_entries: 100\n")
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        for n in names:
            assert ask(d.dns_port, n).rcode() == dns.rcode.NOERROR
        c = counters(d)
        assert c["entries"] == 100 and c["evictions"] == 200
        assert d.metric("nocpolicy_dns_cache_entries") == 100
        assert d.metric("nocpolicy_dns_cache_evictions_total") == 200
        assert ask(d.dns_port, names[-1]).answer and counters(d)["hits"] == c["hits"] + 1   # newest kept
    finally:
        d.stop()
        ub.stop()


def test_byte_bound_covers_the_real_memory():
    """max_bytes bounds what the entries really take (tracemalloc), not just a guess."""
    from nocpolicy.dns.cache import AnswerCache, cache_key
    from nocpolicy.policy.dnsconf import CacheSettings
    conf = CacheSettings(max_entries=10**7, max_bytes=8 * 2**20)
    cache = AnswerCache(conf)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    n = 0
    while cache.evictions == 0:
        name = f"host{n}.bytes-bound.example".encode()
        qname = b"".join(bytes((len(p),)) + p for p in name.split(b".")) + b"\0"
        q = b"\0\0\1\0\0\1\0\0\0\0\0\0" + qname + b"\0\1\0\1"
        resp = b"\0\0\x81\x80\0\1\0\1\0\0\0\0" + qname + b"\0\1\0\1" + b"\xc0\x0c\0\1\0\1\0\0\1\x2c\0\4\xc0\0\2\1"
        assert cache.store(cache_key(q, len(q)), resp, len(q), cache.clock())
        n += 1
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert cache.bytes <= conf.max_bytes and used <= conf.max_bytes * 1.1, (used, cache.bytes, len(cache.d))


NAMES = ["www.example.org", "multi.example.org", "mail.example.org", "nothere.neg.example",
         "there.neg.example", "target3.example.org", "alias3.example.org"]


def _recase(name: str, bits: int) -> str:
    return "".join(c.upper() if bits >> (i % 60) & 1 else c for i, c in enumerate(name))


def _rrsets(section) -> set:
    return {(str(rr.name).lower(), rr.rdtype, frozenset(str(x) for x in rr)) for rr in section}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), bits=st.integers(0, 2**60), rdtype=st.sampled_from(["A", "AAAA", "TXT", "MX"]),
       edns=st.sampled_from([-1, 0]), do=st.booleans(), cd=st.booleans(), size=st.sampled_from([512, 1232, 4096]))
def test_cached_answers_equal_the_upstreams(env, name, bits, rdtype, edns, do, cd, size):
    d, ub = env
    qname = _recase(name, bits)
    kw = dict(edns=edns, do=do and edns >= 0, cd=cd, size=size)
    ask(d.dns_port, qname, rdtype, **kw)                       # fills the cache (or was there)
    ours = ask(d.dns_port, qname, rdtype, **kw)                # from the cache
    theirs = ask(ub.port, qname, rdtype, **kw)
    assert str(ours.question[0].name) == str(theirs.question[0].name)       # letter case kept
    assert ours.rcode() == theirs.rcode() and ours.flags == theirs.flags
    assert ours.edns == theirs.edns and ours.ednsflags == theirs.ednsflags
    for a, b in ((ours.answer, theirs.answer), (ours.authority, theirs.authority),
                 (ours.additional, theirs.additional)):
        assert _rrsets(a) == _rrsets(b)
        up = {(str(r.name).lower(), r.rdtype): r.ttl for r in b}
        assert all(r.ttl <= up[(str(r.name).lower(), r.rdtype)] for r in a)


def test_workers_cache_apart_and_flush_reaches_every_worker(tmp_path):
    ub = Unbound(tmp_path, ["w.example.org. 300 IN A 192.0.2.55"]).start()
    d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, ub.port), extra_args=["--workers", "2"])
    try:
        d.start()

        def both_cached():
            for _ in range(16):           # fresh sockets: SO_REUSEPORT spreads them over both processes
                assert ask(d.dns_port, "w.example.org").answer
            procs = d.ctl_json("cache", "show")["processes"]
            return len(procs) == 2 and all(p.get("entries", 0) >= 1 for p in procs)
        wait_for(both_cached, 20, interval=0.2, what="the name cached in both processes")
        out = d.ctl_json("cache", "flush")
        assert out["workers_confirmed"] is True
        wait_for(lambda: d.ctl_json("cache", "show")["total"]["entries"] == 0, 10, what="every cache empty")
    finally:
        d.stop()
        ub.stop()


def test_upstreams_system_reads_resolv_conf_and_skips_ourselves(tmp_path, policy_dir):
    from types import SimpleNamespace

    from nocpolicy.dns.component import DnsGuard
    from nocpolicy.errors import PolicyInvalid
    from nocpolicy.policy.dnsconf import system_upstreams
    from nocpolicy.policy.load import load_policy
    from nocpolicy.policy.nodes import Loc
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 127.0.0.1\nnameserver fe80::1%eth0\n"
                    "nameserver not-an-address\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n")
    ups = system_upstreams(Loc("x", 1), str(conf))
    assert [(u.id, u.address) for u in ups] == [("system-1", ("127.0.0.1", 53)), ("system-2", ("fe80::1", 53)),
                                                ("system-3", ("192.0.2.53", 53))]
    conf.write_text("search example\n")
    with pytest.raises(Exception, match="names no usable nameserver"):
        system_upstreams(Loc("x", 1), str(conf))
    want = [ln.split()[1].split("%")[0] for ln in open("/etc/resolv.conf") if ln.startswith("nameserver")][:3]
    # the example policy: the local resolver, then the host's first resolver (`address: system`)
    p = load_policy(policy_dir)
    assert [u.address for u in p.dns.upstreams] == [("127.0.0.1", 53), (want[0], 53)]
    assert [u.system for u in p.dns.upstreams] == [False, True]
    example = (policy_dir / "dns.yaml").read_text()
    (policy_dir / "dns.yaml").write_text(example.split("  upstreams:")[0] + "  upstreams: system\n"
                                         + example.split("      timeout: 1500ms\n", 2)[2])
    p = load_policy(policy_dir)             # `upstreams: system`: every nameserver, as the C library reads them
    assert p.dns.upstreams_system and [u.address[0] for u in p.dns.upstreams] == want
    # ...never nocpolicyd itself
    fake = SimpleNamespace(ctx=SimpleNamespace(options=SimpleNamespace(dns_listen=[(p.dns.upstreams[0].address[0], 53)])))
    assert p.dns.upstreams[0] not in DnsGuard._upstreams(fake, p)
    (policy_dir / "dns.yaml").write_text((policy_dir / "dns.yaml").read_text().replace("upstreams: system",
                                                                                       "upstreams: sytem"))
    with pytest.raises(PolicyInvalid) as info:
        load_policy(policy_dir)
    assert any("dns.upstreams" in str(x) and "'system'" in str(x) for x in info.value.problems)


def _a_query(name: bytes, edns: bytes = b"", flags: bytes = b"\1\0") -> bytes:
    qname = b"".join(bytes((len(p),)) + p for p in name.split(b".")) + b"\0"
    return b"\0\7" + flags + b"\0\1\0\0\0\0\0" + (b"\1" if edns else b"\0") + qname + b"\0\1\0\1" + edns


def test_an_entry_gives_back_its_whole_key_and_refuses_another_key_with_its_hash():
    """One bytes value per entry (memory): the key it was stored under comes back from it
    exactly -- flags, EDNS size, DO, a 255-byte name -- and a lookup under another key that
    lands on the same dict slot finds nothing rather than a wrong answer."""
    from nocpolicy.dns.cache import AnswerCache, cache_key, hkey, key_of
    from nocpolicy.policy.dnsconf import CacheSettings
    cache = AnswerCache(CacheSettings())
    longest = b".".join([b"a" * 63] * 3 + [b"b" * 61])        # 255 bytes on the wire
    opt = b"\0\0\x29\x04\xd0\0\0\x80\0\0\0"                   # OPT: 1232 bytes, DO
    keys = []
    for q in (_a_query(b"www.example.org"), _a_query(longest), _a_query(b"x.example", opt),
              _a_query(b"x.example", flags=b"\1\x10")):
        key = cache_key(q, len(q) - (11 if q[11] else 0))
        qend = len(key) + 2 - (11 if q[11] else 0)
        resp = q[:2] + b"\x81\x80\0\1\0\1\0\0" + q[10:qend] + b"\xc0\x0c\0\1\0\1\0\0\1\x2c\0\4\xc0\0\2\1"
        if q[11]:
            resp = resp[:11] + b"\1" + resp[12:] + q[qend:]
        assert cache.store(key, resp, qend, cache.clock()), q
        assert key_of(cache.d[hkey(key)]) == key
        assert cache.lookup(key, cache.clock())[0] == resp[2:]
        keys.append(key)
    assert len(cache.d) == 4
    a, b = keys[0], keys[2]
    cache.d[hkey(b)] = cache.d[hkey(a)]                        # as if a's hash were b's
    assert cache.lookup(b, cache.clock()) is None and cache.stale_answer(b, cache.clock()) is None


def test_the_one_patch_rerendering_agrees_with_the_general_one():
    """The hot path re-renders a one-RR entry of an earlier second with one patch of its TTL
    (from the second it expires); the general path reads and rewrites every TTL. Second by
    second, both give the same answer, and the patch leaves the end (prefetch, expiry) alone."""
    from nocpolicy.dns.cache import AnswerCache, cache_key, hkey
    from nocpolicy.policy.dnsconf import CacheSettings
    now = [1000.0]
    fast, slow = AnswerCache(CacheSettings(), clock=lambda: now[0]), AnswerCache(CacheSettings(), clock=lambda: now[0])
    q = _a_query(b"www.example.org")
    key = cache_key(q, len(q))
    resp = q[:2] + b"\x81\x80\0\1\0\1\0\0" + q[10:] + b"\xc0\x0c\0\1\0\1\0\0\0\x32\0\4\xc0\0\2\1"   # TTL 50
    for c in (fast, slow):
        assert c.store(key, resp, len(q), now[0])
    hk, seen = hkey(key), []
    for _ in range(60):
        now[0] += 1
        fast.restamp(now[0], 0)
        w = fast.rerender(hk, fast.d[hk])
        r = slow.lookup(key, now[0])
        if w is None:
            break
        assert r is not None and w == r[0]
        seen.append(int.from_bytes(w[-10:-6]))
    assert seen == list(range(49, 5, -1))        # 49 .. 6: at 5 (10 % of 50) a prefetch is due
    assert fast.lookup(key, now[0])[3] is True   # the general path starts it
