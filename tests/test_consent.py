"""Consent by purpose (Art. 45) through the CLI and the admin API of a real nocpolicyd, with a
real unbound: each purpose's default, who/when/channel/wording recorded and audited, the very
next query following cc-blocking, optout as its alias, analysis summaries leaving out the
customers who withdrew, and decisions kept across a restart."""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import dns.edns
import dns.message
import dns.query
import pytest

from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess

CC_NAME = "www.bardubar.com"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consent")
    ub = Unbound(tmp, [f"{CC_NAME}. 300 IN A 192.0.2.99"]).start()
    d = DaemonProcess(tmp, policies=dns_policy(tmp, ub.port)).start()
    yield d
    d.stop()
    ub.stop()


def ede(d, source="127.0.0.1", name=CC_NAME):
    r = dns.query.udp(dns.message.make_query(name, "A", use_edns=0), "127.0.0.1", port=d.dns_port,
                      timeout=3, source=source)
    return [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]


def api(d, command: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{d.admin}/v1/cmd/{command}", data=json.dumps(payload).encode(),
                                 method="POST", headers={"Authorization": f"Bearer {d.token()}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def purposes(d, cid):
    return {p["purpose"]: p for p in d.ctl_json("consent", "show", cid)["purposes"]}


def test_defaults_and_the_clause_of_each_purpose(env):
    d = env
    home, optout = purposes(d, "c-home"), purposes(d, "c-optout")
    assert {k: v["on"] for k, v in home.items()} == {"cc-blocking": True, "analysis": True,
                                                     "isac-source": False, "isac-probe": False}
    assert {k: v["clause"] for k, v in home.items()} == {"cc-blocking": "Art. 45(4)", "analysis": "Art. 45(5)",
                                                         "isac-source": "Art. 45(1)", "isac-probe": "Art. 45(2)"}
    assert optout["cc-blocking"]["on"] is False and optout["cc-blocking"]["source"] == "default"
    text = d.ctl("consent", "show", "c-home", check=True).stdout
    assert "isac-probe" in text and "Art. 45(2)" in text


def test_cc_blocking_by_phone_is_recorded_audited_and_effective_at_once(env):
    d = env
    assert ede(d) == [15]
    out = d.ctl("consent", "set", "c-home", "cc-blocking", "off", "--channel", "phone",
                "--wording", "customer called: wants no blocking", check=True).stdout
    assert "OFF" in out and "effective" in out
    assert ede(d) == []                                    # the very next query is forwarded
    assert ede(d, "127.0.0.3") == [15]
    p = purposes(d, "c-home")["cc-blocking"]
    assert (p["on"], p["channel"], p["actor"], p["wording"]) == (False, "phone", "admin",
                                                                 "customer called: wants no blocking")
    assert p["since"]
    # the opt-out alias sees and changes the same thing
    row = next(c for c in d.ctl_json("optout", "list")["customers"] if c["customer"] == "c-home")
    assert row["optout"] is True and row["source"] == "runtime"
    d.ctl("optout", "off", "c-home", "--reason", "back on", check=True)
    assert ede(d) == [15]
    audit = d.ctl_json("audit", "--subject", "customer:c-home")["audit"]
    assert [(a["action"], a["after"]["purpose"], a["after"]["on"], a["after"]["channel"]) for a in audit[:2]] == \
        [("dns.optout.set", "cc-blocking", True, "operator"), ("consent.set", "cc-blocking", False, "phone")]


def test_bad_arguments_name_the_field(env):
    d = env
    assert api(d, "consent.set", {"customer": "c-home", "purpose": "marketing", "on": True}) == \
        (400, {"error": "unknown purpose 'marketing' (known: cc-blocking, analysis, isac-source, isac-probe)",
               "field": "purpose"})
    status, body = api(d, "consent.set", {"customer": "c-home", "purpose": "analysis", "on": "yes"})
    assert status == 400 and body["field"] == "on"
    status, body = api(d, "consent.set", {"customer": "nobody", "purpose": "analysis", "on": False})
    assert status == 404 and body["field"] == "customer"
    status, body = api(d, "consent.set", {"customer": "c-home", "purpose": "analysis", "on": False,
                                          "channel": "portal"})
    assert status == 400 and body["field"] == "channel"      # only the page itself is the portal
    assert api(d, "consent.set", {"customer": "c-home", "purpose": "analysis", "on": True,
                                  "wording": "x" * 2001})[0] == 400
    assert d.ctl("consent", "set", "nobody", "analysis", "off").returncode == 1


def test_analysis_summaries_leave_out_customers_who_withdrew(env):
    d = env
    for src in ("127.0.0.1", "127.0.0.3"):
        assert ede(d, src, "csam.example") == [16]
    custs = {r["customer"] for r in d.ctl_json("detections", "--summary")["summary"]}
    assert {"c-home", "c-optin"} <= custs
    status, _ = api(d, "consent.set", {"customer": "c-optin", "purpose": "analysis", "on": False})
    assert status == 200
    out = d.ctl_json("detections", "--summary")
    assert "c-optin" not in {r["customer"] for r in out["summary"]} and "c-home" in {
        r["customer"] for r in out["summary"]}
    assert out["excluded_no_analysis_consent"] >= 1
    api(d, "consent.set", {"customer": "c-optin", "purpose": "analysis", "on": True})
    assert "c-optin" in {r["customer"] for r in d.ctl_json("detections", "--summary")["summary"]}


def test_decisions_survive_a_restart_and_old_optouts_carry_over(tmp_path):
    ub = Unbound(tmp_path, [f"{CC_NAME}. 300 IN A 192.0.2.99"]).start()
    d = DaemonProcess(tmp_path, policies=dns_policy(tmp_path, ub.port))
    try:
        d.start()
        d.stop()
        # a state directory from before consent: an opt-out in the old table only
        db = sqlite3.connect(d.state_dir / "nocpolicy.db")
        db.execute("DELETE FROM schema_migrations WHERE component = 'subscribers.consent'")
        db.execute("DROP TABLE consent_log")
        db.execute("INSERT INTO dns_optout VALUES ('c-optin', 1, 'old reason', 'admin', '2026-01-01T00:00:00+00:00')")
        db.commit()
        db.close()
        d.start()
        assert ede(d, "127.0.0.3") == []
        p = purposes(d, "c-optin")["cc-blocking"]
        assert (p["on"], p["wording"], p["since"]) == (False, "old reason", "2026-01-01T00:00:00+00:00")
        d.ctl("consent", "set", "c-home", "isac-source", "on", "--wording", "consent form v1", check=True)
        d.stop()
        d.start()
        assert purposes(d, "c-home")["isac-source"]["on"] is True
        assert ede(d, "127.0.0.3") == [] and ede(d) == [15]
    finally:
        d.stop()
        ub.stop()


# -- ICT-ISAC exports: the consent gate ----------------------------------------------------

def test_isac_export_only_writes_consented_records(env, tmp_path):
    d = env
    assert api(d, "consent.set", {"customer": "c-optin", "purpose": "isac-probe", "on": True,
                                  "wording": "I agree to share attack records (form v3)"})[0] == 200
    granted = purposes(d, "c-optin")["isac-probe"]["since"]
    later = "2099-01-01T00:00:00+09:00"
    before = "2020-01-01T00:00:00+09:00"                # c-optin had not consented yet then
    rows = [
        {"time": later, "victim": "c-optin", "source_address": "198.51.100.7", "source_port": "4444", "kind": "syn"},
        {"time": later, "victim_address": "127.0.0.3", "victim_port": "22", "source_address": "198.51.100.8",
         "source_port": "5555"},                                    # attributed by its static prefix
        {"time": before, "victim": "c-optin", "source_address": "203.0.113.91"},      # before the consent
        {"time": later, "victim": "c-home", "source_address": "203.0.113.92"},        # never consented
        {"time": later, "victim_address": "192.0.2.200", "source_address": "203.0.113.93"},   # nobody's
        {"time": later, "victim": "c-gone", "source_address": "203.0.113.94"},        # unknown customer
    ]
    f = tmp_path / "attacks.json"
    f.write_text(json.dumps({"records": rows}))
    out = d.ctl("isac-export", str(f), check=True).stdout
    assert "2 of 6 record(s) written" in out
    man = d.ctl_json("isac-export", str(f))
    assert man["excluded"] == {"no-consent": 2, "unattributed": 1, "unknown-customer": 1}
    assert (man["received"], man["exported"], man["purpose"]) == (6, 2, "isac-probe")
    data = (d.state_dir / "exports" / man["file"]).read_bytes()
    import hashlib
    import os
    import stat
    assert hashlib.sha256(data).hexdigest() == man["sha256"]
    lines = [json.loads(x) for x in data.decode().splitlines()]
    assert [x["source_address"] for x in lines] == ["198.51.100.7", "198.51.100.8"]
    assert all("c-optin" not in json.dumps(x) for x in lines)      # records, not accounts
    manifest = json.loads((d.state_dir / "exports" / f"{man['id']}.manifest.json").read_text())
    assert manifest["sha256"] == man["sha256"] and manifest["excluded_total"] == 4
    for p in (d.state_dir / "exports").iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    # records without consent are never written anywhere: files, database, audit, log
    for root, _, files in os.walk(d.workdir):
        for name in files:
            blob = (os.path.join(root, name))
            if "policies" in blob or blob.endswith("attacks.json"):
                continue
            content = open(blob, "rb").read()
            for addr in (b"203.0.113.91", b"203.0.113.92", b"203.0.113.93", b"203.0.113.94"):
                assert addr not in content, (blob, addr)
    audit = d.ctl_json("audit", "--subject", f"export:{man['id']}")["audit"]
    assert audit[0]["action"] == "isac.export" and audit[0]["after"]["exported"] == 2
    assert granted
    assert d.metric("nocpolicy_isac_export_records_total", {"result": "no-consent"}) >= 2


def test_isac_export_refuses_bad_records_naming_line_and_field(env, tmp_path):
    d = env
    f = tmp_path / "bad.csv"
    f.write_text("time,victim,source_address,source_port\n"
                 "2026-07-01T09:00:00+09:00,c-optin,198.51.100.7,80\n"
                 "2026-07-01T09:00:00,c-optin,198.51.100.7,80\n"
                 "2026-07-01T09:00:00+09:00,c-optin,not-an-ip,99999\n")
    res = d.ctl("isac-export", str(f))
    assert res.returncode == 1
    assert "bad.csv:3: time:" in res.stderr and "bad.csv:4: source_address:" in res.stderr
    assert "bad.csv:4: source_port:" in res.stderr
    status, body = api(d, "isac.export", {"text": "[]", "purpose": "marketing"})
    assert status == 400 and body["field"] == "purpose"
