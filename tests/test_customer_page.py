"""The customer self-service page in a real browser (Debian's chromium via selenium), against
a real nocpolicyd and a real unbound: a signed link from the portal, C&C blocking switched
off and on by the customer, the next DNS query from the customer's address following it,
and the refusals (tampered link, expired link, missing CSRF token, a session cookie replayed
for another customer)."""

from __future__ import annotations

import os
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request

import dns.edns
import dns.message
import dns.query
import pytest

from browser import chromium, missing
from dns_fixtures import Unbound, dns_policy
from helpers import DaemonProcess, free_port, wait_for
from nocpolicy.web.customerlinks import link_query

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")
CC_NAME = "www.bardubar.com"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("customerpage")
    ub = Unbound(tmp, [f"{CC_NAME}. 300 IN A 192.0.2.99"]).start()
    pol = dns_policy(tmp, ub.port)
    port = free_port()
    d = DaemonProcess(tmp, policies=pol, extra_args=["--customer-listen", f"127.0.0.1:{port}"])
    d.start()
    key_path = d.state_dir / "customer-link.key"
    yield d, f"http://127.0.0.1:{port}", key_path.read_bytes().strip(), key_path
    d.stop()
    ub.stop()


def link(base: str, key: bytes, customer: str, expires: float | None = None, lang: str = "en") -> str:
    return f"{base}/login?{link_query(key, customer, int(expires or time.time() + 300))}&lang={lang}"


def answer(d, source: str = "127.0.0.1"):
    """The answer to a query for the C&C name from ``source`` (127.0.0.1: customer c-home)."""
    r = dns.query.udp(dns.message.make_query(CC_NAME, "A", use_edns=0), "127.0.0.1", port=d.dns_port,
                      timeout=3, source=source)
    ede = [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]
    addrs = [rr.address for rrset in r.answer for rr in rrset if hasattr(rr, "address")]
    return ede, addrs


def click_and_wait(driver, button_id: str, state_id: str, want: str) -> None:
    driver.find_element("id", button_id).click()
    wait_for(lambda: driver.find_element("id", state_id).text == want, 20, what=f"{state_id} = {want}")


def test_customer_switches_cc_blocking_off_and_on(env):
    d, base, key, key_path = env
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert answer(d)[0] == [15]                                   # blocked (Maltrail, security class)
    with chromium() as driver:
        driver.get(link(base, key, "c-home"))
        wait_for(lambda: driver.find_elements("id", "customer"), 20, what="the customer page")
        assert "?sig=" not in driver.current_url and "sig=" not in driver.current_url
        cookie = driver.get_cookie("nocp_customer")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False
        assert driver.find_element("id", "state-cc-blocking").text == "On"
        assert driver.find_element("id", "state-isac-source").text == "Off"     # off unless consented
        assert driver.find_element("tag name", "html").get_attribute("lang") == "en"
        blocked = driver.find_element("id", "blocked").text          # the query above, counted per day and list
        assert re.search(r"\d{4}-\d\d-\d\d cc [1-9]", blocked), blocked
        click_and_wait(driver, "set-cc-blocking", "state-cc-blocking", "Off")
        assert "effective now" in driver.find_element("id", "done").text
        ede, addrs = answer(d)                                     # the very next query: forwarded
        assert ede == [] and addrs == ["192.0.2.99"]
        assert answer(d, "127.0.0.3")[0] == [15]                  # another customer is still protected
        click_and_wait(driver, "set-cc-blocking", "state-cc-blocking", "On")
        assert answer(d)[0] == [15]
        driver.get(f"{base}/?lang=ja")                             # Japanese, same session
        assert driver.find_element("tag name", "html").get_attribute("lang") == "ja"
        assert driver.find_element("id", "state-cc-blocking").text == "オン"
        assert "第45条" in driver.page_source
    audit = d.ctl_json("audit", "--subject", "customer:c-home")["audit"]
    assert [(a["actor"], a["after"]["purpose"], a["after"]["on"], a["after"]["channel"]) for a in audit[:2]] == \
        [("portal", "cc-blocking", True, "portal"), ("portal", "cc-blocking", False, "portal")]
    assert "C&C" in audit[1]["after"]["wording"] or "malware" in audit[1]["after"]["wording"]


def test_tampered_and_expired_links_are_refused(env):
    d, base, key, _ = env
    good = link(base, key, "c-home")
    sig = urllib.parse.parse_qs(urllib.parse.urlparse(good).query)["sig"][0]
    tampered = good.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    other_customer = good.replace("customer=c-home", "customer=c-optin")
    expired = link(base, key, "c-home", expires=time.time() - 5)
    too_long = link(base, key, "c-home", expires=time.time() + 30 * 86400)
    with chromium() as driver:
        for url, words in ((tampered, "not valid"), (other_customer, "not valid"), (expired, "expired"),
                           (too_long, "not valid")):
            driver.get(url)
            assert words in driver.find_element("id", "error").text, url
            assert driver.get_cookie("nocp_customer") is None
            driver.get(f"{base}/")                                  # and no access
            assert "session has ended" in driver.find_element("id", "error").text


def post(url: str, fields: dict, cookie: str) -> int:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST",
                                 headers={"Cookie": f"nocp_customer={cookie}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_missing_csrf_and_replayed_cookie_are_refused(env):
    d, base, key, _ = env
    before = d.ctl_json("consent", "show", "c-optin")["purposes"]
    with chromium() as driver:
        driver.get(link(base, key, "c-home"))
        wait_for(lambda: driver.find_elements("id", "customer"), 20, what="the customer page")
        sid = driver.get_cookie("nocp_customer")["value"]
        csrf = driver.find_element("name", "csrf").get_attribute("value")
        # a form without its token (removed from the page before it is sent)
        driver.execute_script("document.querySelectorAll('input[name=csrf]').forEach(e => e.remove())")
        driver.find_element("id", "set-analysis").click()
        wait_for(lambda: driver.find_elements("id", "error"), 20, what="the refusal page")
        assert "could not be verified" in driver.find_element("id", "error").text
    # c-home's session cookie and token, replayed in a form for c-optin
    form = {"csrf": csrf, "customer": "c-optin", "purpose": "isac-source", "on": "on"}
    assert post(f"{base}/consent", form, sid) == 403
    assert post(f"{base}/consent", {**form, "customer": "c-home", "csrf": "x" * 43}, sid) == 403
    assert post(f"{base}/consent", {**form, "customer": "c-home"}, "not-a-session") == 401
    assert d.ctl_json("consent", "show", "c-optin")["purposes"] == before
    home = {p["purpose"]: p["on"] for p in d.ctl_json("consent", "show", "c-home")["purposes"]}
    assert home["analysis"] is True and home["isac-source"] is False        # nothing changed


def test_tls_secure_cookie_and_a_bad_key_file(tmp_path):
    """Under TLS (certificate files) the session cookie is also Secure; a key file that is too
    short stops the start with a message naming it; without --customer-listen nothing listens
    and no key is made."""
    import ssl
    import subprocess

    cert, keyf = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(keyf), "-out", str(cert)], check=True, capture_output=True)
    link_key = tmp_path / "portal.key"
    link_key.write_text("a" * 64 + "\n")
    port = free_port()
    d = DaemonProcess(tmp_path, extra_args=["--customer-listen", f"127.0.0.1:{port}", "--customer-link-key",
                                            str(link_key), "--customer-tls-cert", str(cert),
                                            "--customer-tls-key", str(keyf)])
    try:
        d.start()
        assert stat.S_IMODE(os.stat(link_key).st_mode) == 0o600                  # repaired
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False
        url = f"https://127.0.0.1:{port}/login?{link_query(b'a' * 64, 'c1001', int(time.time()) + 60)}"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            cookie = resp.headers["Set-Cookie"]
        assert "nocp_customer=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
    finally:
        d.stop()
    link_key.write_text("short\n")
    (tmp_path / "again").mkdir()
    (tmp_path / "plain").mkdir()
    d2 = DaemonProcess(tmp_path / "again", extra_args=["--customer-listen", f"127.0.0.1:{free_port()}", "--customer-link-key",
                                                      str(link_key)])
    d2.start(wait=False)
    assert d2.proc.wait(30) == 1
    assert f"link key {link_key}" in d2.log() and "at least 32 bytes" in d2.log()
    plain = DaemonProcess(tmp_path / "plain").start()
    try:
        assert not (plain.state_dir / "customer-link.key").exists()
        assert "customer page" not in plain.log()
    finally:
        plain.stop()


def test_link_followed_from_the_portals_site(env):
    """The portal is another site: the customer clicks the signed link there. The SameSite=Strict
    cookie set by that cross-site navigation must still reach the page after the sign-in page
    moves on (its own same-site navigation), so the customer lands on their choices."""
    d, base, key, _ = env
    portal = f"data:text/html,<a id='go' href='{link(base, key, 'c-optin')}'>choices</a>"
    with chromium() as driver:
        driver.get(portal)
        driver.find_element("id", "go").click()
        wait_for(lambda: driver.find_elements("id", "customer") or driver.find_elements("id", "error"), 20,
                 what="the customer page or a refusal")
        assert driver.find_element("id", "customer").text == "c-optin"
