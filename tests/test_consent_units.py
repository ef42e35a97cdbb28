"""The pure pieces of Art. 45: signed links, consent at a time, the export gate, case
de-duplication, the effective consent of a subscriber."""

from __future__ import annotations

import datetime as dt

import pytest

from nocpolicy.advisories.alert import languages, render
from nocpolicy.advisories.cases import matching_case
from nocpolicy.exports.gate import AttackRecord, gate
from nocpolicy.subscribers.consent import consented_at
from nocpolicy.subscribers.model import Decision, Decisions
from nocpolicy.subscribers.view import effective_consent
from nocpolicy.web.customerlinks import MAX_LIFETIME, LinkRefused, sign, verify
from nocpolicy.web.customertext import pick_lang

KEY = b"k" * 64
NOW = 1_800_000_000


def test_signed_links():
    exp = NOW + 300
    sig = sign(KEY, "c1001", exp)
    assert verify(KEY, "c1001", str(exp), sig, NOW) == "c1001"
    assert verify(KEY, "c1001", str(exp), sig.upper(), NOW) == "c1001"
    for cid, e, s, reason in (("c1002", str(exp), sig, "invalid"),              # another customer
                              ("c1001", str(exp + 1), sig, "invalid"),          # a longer life
                              ("c1001", str(exp), sign(b"x" * 64, "c1001", exp), "invalid"),
                              ("c1001", str(exp), sig[:-1], "invalid"),
                              ("c1001", "-5", sig, "invalid"), (None, str(exp), sig, "invalid"),
                              ("c 1", str(exp), sig, "invalid")):
        with pytest.raises(LinkRefused) as err:
            verify(KEY, cid, e, s, NOW)
        assert err.value.reason == reason
    with pytest.raises(LinkRefused) as err:
        verify(KEY, "c1001", str(exp), sig, exp)                      # at its expiry
    assert err.value.reason == "expired"
    far = NOW + MAX_LIFETIME + 1
    with pytest.raises(LinkRefused):
        verify(KEY, "c1001", str(far), sign(KEY, "c1001", far), NOW)


def test_pick_lang():
    assert pick_lang("en", "ja", "ja") == "en"
    assert pick_lang("xx", "en", "ja") == "en"
    assert pick_lang(None, None, "fr-FR,en-US;q=0.8,ja;q=0.5") == "en"
    assert pick_lang(None, None, None) == "ja"


def t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


def test_consented_at_follows_the_history():
    hist = [("2026-01-01T00:00:00+00:00", True), ("2026-03-01T09:00:00+09:00", False)]
    assert consented_at(hist, t("2025-12-31T23:59:59+00:00"), False) is False      # before: the default
    assert consented_at(hist, t("2026-01-01T09:00:00+09:00"), False) is True       # the same instant
    assert consented_at(hist, t("2026-02-28T23:59:59+00:00"), False) is True
    assert consented_at(hist, t("2026-03-01T00:00:00+00:00"), False) is False      # 09:00 JST
    assert consented_at(None, t("2026-03-01T00:00:00+00:00"), True) is True


def test_gate_counts_what_it_leaves_out():
    recs = [AttackRecord(t("2026-02-01T00:00:00+00:00"), v, None, None, "203.0.113.1", None, None)
            for v in ("a", "b", None, "gone")]
    kept, excluded = gate(recs, ["a", "b", None, "gone"], lambda c: c in ("a", "b"),
                          lambda c, when: c == "a")
    assert [r.victim for r in kept] == ["a"]
    assert excluded == {"unattributed": 1, "unknown-customer": 1, "no-consent": 1}


def test_effective_consent_defaults_policy_and_decisions():
    d = Decisions()
    assert effective_consent("a", False, d) == (frozenset({"cc-blocking", "analysis"}), "policy")
    assert effective_consent("a", True, d) == (frozenset({"analysis"}), "policy")
    d = d.with_(Decision("optout", "a", True))                    # an older peer's opt-out
    assert effective_consent("a", False, d)[0] == {"analysis"}
    d = d.with_(Decision("consent:cc-blocking", "a", True)).with_(Decision("consent:isac-probe", "a", True))
    assert effective_consent("a", True, d) == (frozenset({"cc-blocking", "analysis", "isac-probe"}), "runtime")
    with pytest.raises(ValueError):
        Decision.from_json({"kind": "consent:marketing", "customer": "a", "value": True})


def test_matching_case_window():
    cases = [{"first_seen": "2026-07-01T00:00:00+00:00", "last_seen": "2026-07-02T00:00:00+00:00"}]
    week = 7 * 86400
    assert matching_case(cases, "2026-07-08T23:00:00+00:00", week) is cases[0]
    assert matching_case(cases, "2026-06-24T01:00:00+00:00", week) is cases[0]
    assert matching_case(cases, "2026-07-09T00:00:01+00:00", week) is None


def test_alert_text_in_the_contacts_language():
    case = {"id": 7, "source": "nicter", "service": "scan", "finding": "malware-mirai", "address": "192.0.2.1",
            "port": None, "first_seen": "2026-07-01T00:30:00+00:00", "last_seen": "2026-07-01T00:30:00+00:00",
            "reports": 3, "message_id": "<a@b>", "created": "2026-07-01T01:00:00+00:00"}
    en = render(case, sender="noc@isp.example", recipient="x@y.example", language="en", provider="ISP")
    assert en["Subject"] == "Security advisory about a device on your line"
    body = en.get_content()
    assert "2026-07-01 09:30 JST" in body and "malware" in body and "Reports: 3" in body and "お" not in body
    assert languages("ja+en") == ("ja", "en") and languages("fr") == ("ja", "en")
