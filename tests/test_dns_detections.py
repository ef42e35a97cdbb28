"""Detection log: pseudonyms, batching into rows with counts, retention pruning; opt-out persistence."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.query

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess
from nocpolicy.dns.detections import DetectionLog, pseudonym
from nocpolicy.dns.verdict import Verdict
from nocpolicy.store import Store


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_batches_pseudonyms_and_retention(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    clock = Clock(1_700_000_000.0)
    log = DetectionLog(store, b"k" * 32, now=clock)
    v = Verdict("nxdomain", "c1", "cc", "security", "evil.example", "www.evil.example")
    for _ in range(5):
        log.note(v, "192.0.2.7")
    log.note_many(v, "192.0.2.8", 3, source="dnstap")
    assert log.write(log.take()) == 2
    rows = {r["source"]: r for r in log.query(since=None, customer="c1", limit=10)}
    assert rows["dns"]["count"] == 5 and rows["dnstap"]["count"] == 3
    assert rows["dns"]["client"] == pseudonym(b"k" * 32, "192.0.2.7") != pseudonym(b"x" * 32, "192.0.2.7")
    assert "192.0.2.7" not in str(rows)
    summary = log.summary(since=None, customer=None)
    assert sum(r["count"] for r in summary) == 8
    clock.t += 31 * 86400
    log.note(v, "192.0.2.9")
    log.write(log.take())
    assert log.prune(30 * 86400) == 2                       # the two old rows, not the new one
    assert [r["client"] for r in log.query(since=None, customer=None, limit=10)] == [pseudonym(b"k" * 32, "192.0.2.9")]
    store.close()


def test_optout_survives_restart(tmp_path):
    ub = Unbound(tmp_path, ["www.example.org. 300 IN A 192.0.2.80"]).start()
    pol = dns_policy(tmp_path, ub.port)
    try:
        d = DaemonProcess(tmp_path, policies=pol).start()
        d.ctl("optout", "on", "c-home", "--reason", "test", check=True)
        d.stop()
        d = DaemonProcess(tmp_path, policies=pol).start()    # same state directory
        try:
            row = next(c for c in d.ctl_json("optout", "list")["customers"] if c["customer"] == "c-home")
            assert row["optout"] is True and row["source"] == "runtime" and row["reason"] == "test"
            q = dns.message.make_query("www.bardubar.com", "A", use_edns=0)
            r = dns.query.udp(q, "127.0.0.1", port=d.dns_port, timeout=3)
            assert not [o for o in r.options if isinstance(o, dns.edns.EDEOption)]   # forwarded, not blocked
        finally:
            d.stop()
    finally:
        ub.stop()


def test_drain_waits_longer_when_it_costs_more_than_its_share_of_the_loop():
    """A DGA flood over thousands of parents makes each drain costly: the next one waits so the
    drain stays within DRAIN_SHARE of the loop, never longer than FLUSH_MAX; a cheap one keeps
    the one-second cadence of the metrics and the detection log."""
    import pytest

    from nocpolicy.dns.component import DRAIN_SHARE, FLUSH_EVERY, FLUSH_MAX, flush_wait
    assert flush_wait(0.0) == FLUSH_EVERY == 1.0
    assert flush_wait(0.005) == FLUSH_EVERY
    assert flush_wait(0.1) == pytest.approx(0.1 / DRAIN_SHARE) and 1.0 < flush_wait(0.1) < FLUSH_MAX
    assert flush_wait(3.0) == FLUSH_MAX == 10.0
