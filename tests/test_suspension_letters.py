"""Suspension letters on every channel of the customer's fault contact (issue 18): e-mail through a
real SMTP server (aiosmtpd), a webhook to a local aiohttp receiver, the contact's MQTT topic on a
real mosquitto; each once, in the contact's language, and once only across a restart. A letter
still waiting when the contact changes (policy reload, ``contact set``) goes to the new one."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import socket

from aiohttp import web

from helpers import DaemonProcess, copy_policies, free_port, wait_for
from mosquitto_fixture import Mosquitto
from nocpolicy.clock import ManualClock, SystemClock
from nocpolicy.component import Component
from nocpolicy.errors import NocpolicyError
from nocpolicy.fleet.component import MqttBridge
from suspension_fixtures import T0, policy_dir, start_daemon, suspension_yaml, until
from test_maintenance_mqtt import NODE, USERS, Subscriber, acl
from test_maintenance_smtp import SmtpSink, smtp_yaml

TOPIC = "nocpolicy/v1/contacts/{}"


def customers(hook_port: int) -> str:
    def contact(cid: str, email: str, language: str) -> str:
        return (f'{{email: {email}, webhook: "http://127.0.0.1:{hook_port}/hook/{cid}", '
                f'mqtt_topic: "{TOPIC.format(cid)}", language: {language}}}')
    return f"""\
plans:
  - {{id: home, name: Home, down: 100mbit, up: 20mbit}}
customers:
  - id: c-en
    name: English customer
    prefixes: [127.0.0.1/32]
    plan: home
    contact: {contact("c-en", "en@customer.example", "en")}
  - id: c-ja
    name: 日本の顧客
    prefixes: [127.0.0.2/32]
    plan: home
    contact: {contact("c-ja", "ja@customer.example", "ja")}
"""


class Receiver:
    """A customer's webhook endpoint (aiohttp): records every POST."""

    def __init__(self):
        self.port = free_port()
        self.posts: list[dict] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append({"customer": request.match_info["customer"],
                           "key": request.headers.get("Idempotency-Key"), "doc": await request.json()})
        return web.json_response({"ok": True})

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook/{customer}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    def of(self, customer: str, kind: str) -> list[dict]:
        return [p for p in self.posts if p["customer"] == customer and p["doc"]["letter"] == kind]


def rows(r, sql: str, *params) -> list[dict]:
    with r.d.ctx.store.transaction() as db:
        return [dict(x) for x in db.execute(sql, params).fetchall()]


def delivered(r, kind: str, n: int) -> bool:
    """``n`` letters of ``kind``, each sent by e-mail, POSTed and published (acknowledged)."""
    got = rows(r, "SELECT n.state AS mail, h.state AS hook, m.state AS mqtt FROM sp_notice n "
                  "JOIN sp_hook h ON h.notice_id=n.id JOIN sp_mqtt m ON m.notice_id=n.id WHERE n.kind=?", kind)
    return len(got) == n and all(g == {"mail": "sent", "hook": "sent", "mqtt": "delivered"} for g in got)


def mails(sink, to: str, kind: str) -> list:
    return [m["msg"] for m in sink.messages
            if to in m["rcpt"] and (m["msg"]["X-Nocpolicy-Suspension"] or "").endswith(f"/{kind}")]


def text(msg) -> str:
    return f"{msg['Subject']}\n{msg.get_body(('plain',)).get_content()}"


def published(sub: Subscriber, customer: str, kind: str) -> list[dict]:
    return [doc for topic, retained, doc in sub.messages()
            if topic == TOPIC.format(customer) and not retained and doc.get("letter") == kind]


def suspend_args(customer: str) -> dict:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    return {"customer": customer, "cause": "nonpayment", "mode": "walled-garden", "reason": "invoice 2026-02 unpaid",
            "from": start.isoformat(), "until": (start + dt.timedelta(hours=3)).isoformat()}


async def test_letters_reach_every_channel_once_in_the_contacts_language(tmp_path):
    broker = Mosquitto(tmp_path, USERS, acl()).start()
    sub = Subscriber(broker, TOPIC.format("c-en"), TOPIC.format("c-ja"))
    hooks = await Receiver().start()
    mqtt = {"mqtt": f"mqtt://{NODE}@127.0.0.1:{broker.port}", "mqtt_password_file": str(broker.password_file(NODE))}
    r = None
    try:
        with SmtpSink() as sink:
            pol = policy_dir(tmp_path, free_port(kind=2), sink.port, free_port())
            (pol / "customers.yaml").write_text(customers(hooks.port))
            (pol / "maintenance.yaml").write_text(smtp_yaml(sink.port, "  webhooks: true\n"))
            r = await start_daemon(pol, tmp_path / "state", SystemClock(), 0, more_types=[MqttBridge], **mqtt)
            await until(lambda: r.metric("nocpolicy_mqtt_connected") == 1, what="daemon connected")
            for cid in ("c-en", "c-ja"):         # the subscriber's persistent session holds both topics
                assert broker.pub(NODE, TOPIC.format(cid), json.dumps({"probe": cid})).returncode == 0
                sub.wait(lambda m, cid=cid: m[2].get("probe") == cid)

            for cid in ("c-en", "c-ja"):
                await r.cmd("suspension.suspend", **suspend_args(cid))
            await until(lambda: delivered(r, "notice", 2), what="both notices on all three channels")
            await until(lambda: published(sub, "c-en", "notice") and published(sub, "c-ja", "notice"),
                        what="both notices at the subscriber")    # the broker acknowledged before it forwarded
            ids = {x["customer"]: x["message_id"] for x in rows(r, "SELECT customer, message_id FROM sp_notice")}

            [en_mail], [ja_mail] = mails(sink, "en@customer.example", "notice"), mails(sink, "ja@customer.example",
                                                                                         "notice")
            assert en_mail["Message-ID"] == ids["c-en"] and ja_mail["Message-ID"] == ids["c-ja"]
            for cid, mail in (("c-en", en_mail), ("c-ja", ja_mail)):
                [post] = hooks.of(cid, "notice")
                [doc] = published(sub, cid, "notice")
                assert post["key"] == post["doc"]["message_id"] == doc["message_id"] == ids[cid]
                assert post["doc"] == doc and doc["account"] == cid and doc["provider"] == "Test ISP"
                assert doc["facts"]["cause"] == "nonpayment" and doc["facts"]["mode"] == "walled-garden"
                assert doc["text"].rstrip() == mail.get_body(("plain",)).get_content().replace("\r\n", "\n").rstrip()
            en, ja = text(en_mail), text(ja_mail)
            assert "Dear English customer" in en and "invoice 2026-02 unpaid" in en and "様" not in en
            assert "日本の顧客 様" in ja and "支払" in ja and "Dear" not in ja and "[Notice" not in ja
            assert published(sub, "c-en", "notice")[0]["languages"] == ["en"]
            assert published(sub, "c-ja", "notice")[0]["languages"] == ["ja"]
            for channel in ("email", "webhook", "mqtt"):
                assert r.metric("nocpolicy_suspension_letter_deliveries_total", channel=channel, result="done") == 2

            # a restart sends nothing again; the next letter (the cancellation) goes out on every channel
            await r.stop()
            r = await start_daemon(pol, tmp_path / "state", SystemClock(), 0, more_types=[MqttBridge], **mqtt)
            await r.cmd("suspension.resume", customer="c-en", reason="paid")
            await until(lambda: delivered(r, "cancelled", 1), what="the cancellation on all three channels")
            await until(lambda: published(sub, "c-en", "cancelled"), what="cancellation on the topic")
            assert "Suspension cancelled" in text(mails(sink, "en@customer.example", "cancelled")[0])
            assert len(hooks.of("c-en", "cancelled")) == 1
            for cid, to in (("c-en", "en@customer.example"), ("c-ja", "ja@customer.example")):
                assert len(mails(sink, to, "notice")) == 1
                assert len(hooks.of(cid, "notice")) == 1
                assert len(published(sub, cid, "notice")) == 1
    finally:
        if r is not None:
            await r.stop()
        await hooks.stop()
        sub.close()
        broker.stop()


MOVING = """\
plans:
  - {{id: home, name: Home, down: 100mbit, up: 20mbit}}
customers:
  - id: c-move
    name: Moving customer
    prefixes: [127.0.0.1/32]
    plan: home
    contact: {contact}
  - id: c-two
    name: Second customer
    prefixes: [127.0.0.2/32]
    plan: home
    contact: {{email: two@customer.example, language: en}}
  - id: c-none
    name: Customer without a contact
    prefixes: [127.0.0.3/32]
    plan: home
"""


async def test_a_waiting_letter_follows_a_new_contact(tmp_path):
    old, new = "old@customer.example", "new@customer.example"
    with SmtpSink(tempfail={old, "two@customer.example"}) as sink:
        pol = policy_dir(tmp_path, free_port(kind=2), sink.port, free_port())
        (pol / "customers.yaml").write_text(MOVING.format(contact=f"{{email: {old}, language: ja}}"))
        clock = ManualClock(T0)
        r = await start_daemon(pol, tmp_path / "state", clock, 0)
        try:
            base = {"cause": "obligations", "mode": "block", "reason": "open mail relay",
                    "from": "2026-03-03T09:00+09:00"}
            await r.cmd("suspension.suspend", customer="c-move", **base)
            window = {"id": "mw-move", "kind": "planned", "start": "2026-03-25T01:00+09:00",
                      "end": "2026-03-25T05:00+09:00", "reason": {"ja": "工事", "en": "works"},
                      "scope": {"customers": ["c-move"]}, "impact": "OUTAGE"}
            await r.cmd("maintenance.add", **window)

            def letter(customer: str) -> dict:
                return rows(r, "SELECT * FROM sp_notice WHERE customer=?", customer)[0]
            await until(lambda: letter("c-move")["attempts"] == 1, what="first attempt (451 from the server)")
            first = letter("c-move")
            assert first["state"] == "pending" and first["contact_version"] == 1 and first["recipient"] == old
            assert dt.datetime.fromisoformat(first["next_attempt"]) == T0 + dt.timedelta(seconds=30)   # backoff

            # the policy's contact changes (new address, language, an MQTT topic): reload
            (pol / "customers.yaml").write_text(MOVING.format(
                contact=f'{{email: {new}, mqtt_topic: "{TOPIC.format("c-move")}", language: en}}'))
            out = await r.d.reload("test")
            assert out["ok"], out
            [mail] = await until(lambda: mails(sink, new, "notice"), what="the letter at the new address")
            assert mail["Message-ID"] == first["message_id"]
            assert "Dear Moving customer" in text(mail) and "様" not in text(mail)      # the new contact's language
            await until(lambda: letter("c-move")["state"] == "sent", what="the letter recorded sent")
            moved = letter("c-move")
            assert (moved["state"], moved["recipient"], moved["contact_version"]) == ("sent", new, 2)
            mq = rows(r, "SELECT topic, state FROM sp_mqtt WHERE notice_id=?", moved["id"])
            assert mq == [{"topic": TOPIC.format("c-move"), "state": "pending"}]          # no bridge here: waits
            assert not [m for m in sink.messages if old in m["rcpt"]]
            [shown] = (await r.cmd("suspension.list", customer="c-move"))["letters"]
            assert shown["email"] == {"to": new, "state": "sent", "attempts": 1, "error": ""}
            assert shown["contact_version"] == 2 and shown["webhook"] is None
            assert shown["mqtt"]["topic"] == TOPIC.format("c-move") and shown["mqtt"]["state"] == "pending"
            def notice():
                return rows(r, "SELECT recipient, contact_version, state FROM mw_outbox WHERE window_id='mw-move'")
            await until(lambda: notice()[0]["state"] == "sent", what="the maintenance notice at the new address")
            assert notice() == [{"recipient": new, "contact_version": 2, "state": "sent"}]   # maintenance's too

            # contact set at runtime: the same for a letter still waiting
            await r.cmd("suspension.suspend", customer="c-two", **base)
            await until(lambda: letter("c-two")["attempts"] == 1, what="c-two's first attempt")
            await r.cmd("contact.set", customer="c-two", email="desk@customer.example", reason="moved")
            [mail2] = await until(lambda: mails(sink, "desk@customer.example", "notice"), what="c-two's letter")
            assert mail2["Message-ID"] == letter("c-two")["message_id"] and letter("c-two")["contact_version"] == 2

            # no contact at all (urgent): the letter failed; an MQTT-only contact takes it (e-mail row: skipped)
            urgent = {k: v for k, v in base.items() if k != "from"}
            await r.cmd("suspension.suspend", customer="c-none", urgent=True, justification="attack from the line",
                        **urgent)
            assert letter("c-none")["state"] == "failed"
            await r.cmd("contact.set", customer="c-none", mqtt_topic=TOPIC.format("c-none"))
            await until(lambda: letter("c-none")["state"] == "skipped", what="the letter taken by the MQTT contact")
            row = letter("c-none")
            assert (row["state"], row["recipient"], row["contact_version"]) == ("skipped", None, 2)
            mq = rows(r, "SELECT topic, state FROM sp_mqtt WHERE notice_id=?", row["id"])
            assert mq == [{"topic": TOPIC.format("c-none"), "state": "pending"}]
        finally:
            await r.stop()


def answers(port: int) -> bool:
    """True: the notice page answers on 127.0.0.1:port; False: the connection is refused."""
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/generate_204", headers={"Host": "connectivitycheck.example"})
        return c.getresponse().status == 200
    except ConnectionRefusedError:
        return False
    finally:
        c.close()


def listening(port: int) -> bool:
    """A TCP connect only (the kernel answers it): safe to poll from the event loop's thread."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


class Refuser(Component):
    """Another component that refuses the next policy when told to (after suspension prepared it)."""
    name = "refuser"
    refuse = False

    async def prepare(self, policy, change):
        if Refuser.refuse:
            raise NocpolicyError("refused for the test")
        return None


async def test_a_changed_notice_page_address_takes_effect_at_the_reload(tmp_path):
    p1, p2, p3, p4 = (free_port() for _ in range(4))
    with SmtpSink() as sink:
        pol = policy_dir(tmp_path, free_port(kind=2), sink.port, p1)
        r = await start_daemon(pol, tmp_path / "state", ManualClock(T0), p1, more_types=[Refuser])
        busy = socket.socket()
        try:
            assert await asyncio.to_thread(answers, p1)

            # moved: the new address serves at once, the old one is closed
            (pol / "suspension.yaml").write_text(suspension_yaml(p2))
            out = await r.d.reload("test")
            assert out["ok"] and out["changed"], out
            assert await asyncio.to_thread(answers, p2)
            await until(lambda: not listening(p1), what="the old address closed")
            assert r.comp.status()["notice_page"] == f"127.0.0.1:{p2}"

            # the new address is taken: the reload is refused naming file:line and field; p2 keeps serving
            busy.bind(("127.0.0.1", p3))
            busy.listen()
            version = r.d.policy.version
            (pol / "suspension.yaml").write_text(suspension_yaml(p3))
            out = await r.d.reload("test")
            assert not out["ok"] and r.d.policy.version == version
            [error] = out["errors"]
            assert f"suspension.yaml:3: suspension.notice_page.listen: cannot listen on 127.0.0.1:{p3}" in error
            assert "in use" in error and f"stays on 127.0.0.1:{p2}" in error, error
            assert await asyncio.to_thread(answers, p2)

            # another component refuses the reload: the address bound for it is let go again
            Refuser.refuse = True
            (pol / "suspension.yaml").write_text(suspension_yaml(p4))
            out = await r.d.reload("test")
            assert not out["ok"] and "refuser" in out["errors"][0]
            assert not listening(p4)
            assert await asyncio.to_thread(answers, p2)
            Refuser.refuse = False
            out = await r.d.reload("test")
            assert out["ok"], out
            assert await asyncio.to_thread(answers, p4)
            await until(lambda: not listening(p2), what="p2 closed")

            # listen removed: the page closes
            (pol / "suspension.yaml").write_text(suspension_yaml(p4).replace(f"    listen: 127.0.0.1:{p4}\n", ""))
            assert (await r.d.reload("test"))["ok"]
            await until(lambda: not listening(p4), what="the page closed")
            assert r.comp.status()["notice_page"] is None
        finally:
            Refuser.refuse = False
            busy.close()
            await r.stop()


def test_sigkill_mid_batch_then_restart_sends_every_letter_exactly_once(tmp_path):
    with SmtpSink(delay=10.0, slow=(3,)) as sink:     # the third DATA hangs: the kill lands inside it
        policies = copy_policies(tmp_path)
        (policies / "maintenance.yaml").write_text(smtp_yaml(sink.port))
        d = DaemonProcess(tmp_path, policies=policies).start()
        try:
            customers = ("c1001", "c1002", "c1003", "c1004", "c2001")
            date = (dt.date.today() + dt.timedelta(days=200)).isoformat()
            res = d.ctl("abolition", "announce", "--customers", ",".join(customers), "--date", date,
                        "--reason", "end of the ADSL service")
            assert res.returncode == 0, res.stdout + res.stderr
            expected = {f"<abolition-1.abolition.{c}@isp.example>" for c in customers}
            wait_for(lambda: sink.data_started >= 3, timeout=20, what="third letter in flight")
            d.kill()
            assert len(sink.messages) == 2
            d2 = DaemonProcess(tmp_path, policies=policies).start()
            try:
                wait_for(lambda: d2.metric("nocpolicy_suspension_notices", {"kind": "abolition", "state": "sent"})
                         == 5, timeout=30, what="every letter sent")
                counts = collections.Counter(sink.ids())
                assert set(counts) == expected and set(counts.values()) == {1}, counts
                assert "letter(s) were being sent when the daemon stopped" in d2.log()
                out = d2.ctl("suspensions", "--customer", "c2001", check=True).stdout
                assert "letter abolition abolition-1 v1 email:sent comms@fire.example" in out, out
                assert "mqtt:pending nocpolicy/v1/contacts/c2001" in out, out     # no --mqtt here: it waits
            finally:
                d2.stop()
        finally:
            d.kill()


async def test_a_contact_changed_while_the_daemon_was_stopped(tmp_path):
    old, new = "old@customer.example", "new@customer.example"
    with SmtpSink(tempfail={old}) as sink:
        pol = policy_dir(tmp_path, free_port(kind=2), sink.port, free_port())
        (pol / "customers.yaml").write_text(MOVING.format(contact=f"{{email: {old}, language: ja}}"))
        clock = ManualClock(T0)
        r = await start_daemon(pol, tmp_path / "state", clock, 0)
        try:
            await r.cmd("suspension.suspend", customer="c-move", cause="nonpayment", mode="block", reason="unpaid",
                        **{"from": "2026-03-03T09:00+09:00"})
            await until(lambda: rows(r, "SELECT attempts FROM sp_notice")[0]["attempts"] == 1, what="first attempt")
        finally:
            await r.stop()
        (pol / "customers.yaml").write_text(MOVING.format(contact=f"{{email: {new}, language: en}}"))
        r = await start_daemon(pol, tmp_path / "state", clock, 0)
        try:
            [mail] = await until(lambda: mails(sink, new, "notice"), what="the letter at the new address")
            assert "Dear Moving customer" in text(mail)
            assert not [m for m in sink.messages if old in m["rcpt"]]
        finally:
            await r.stop()
