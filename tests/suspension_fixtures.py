"""A daemon in-process for suspension tests: the real components (DNS guard, subscribers,
maintenance's outbox, suspensions) on a real store with a manual clock, a real unbound
upstream, a real SMTP server, and the notice page on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.query

from dns_fixtures import Unbound, dns_policy
from helpers import free_port
from nocpolicy.app import Daemon
from nocpolicy.dns.component import DnsGuard
from nocpolicy.maintenance.component import Maintenance
from nocpolicy.options import Options
from nocpolicy.suspension.component import Suspensions
from test_maintenance_smtp import smtp_yaml, until

T0 = dt.datetime(2026, 3, 2, 0, 0, tzinfo=dt.UTC)          # 09:00 JST
PAGE_A = "192.0.2.80"
PAGE_AAAA = "2001:db8::80"

CUSTOMERS = """\
plans:
  - id: home
    name: Home
    down: 100mbit
    up: 20mbit
customers:
  - id: c-home
    name: Home customer
    prefixes: [127.0.0.1/32]
    plan: home
    contact: {email: home@customer.example, language: ja+en}
  - id: c-two
    name: Second customer
    prefixes: [127.0.0.2/32]
    plan: home
    contact: {email: two@customer.example, language: en}
  - id: c-nocontact
    name: No contact
    prefixes: [127.0.0.3/32]
    plan: home
"""


def suspension_yaml(page_port: int) -> str:
    return f"""\
suspension:
  notice_page:
    listen: 127.0.0.1:{page_port}
    address: [{PAGE_A}, "{PAGE_AAAA}"]
  allow: [pay.isp.test, support.isp.test]
  contact: {{ja: "サポート 0120-000-000", en: "support +81-120-000-000"}}
  provider: Test ISP
"""


def policy_dir(tmp: Path, upstream_port: int, smtp_port: int, page_port: int) -> Path:
    pol = dns_policy(tmp, upstream_port)
    (pol / "customers.yaml").write_text(CUSTOMERS)
    (pol / "maintenance.yaml").write_text(smtp_yaml(smtp_port))
    (pol / "suspension.yaml").write_text(suspension_yaml(page_port))
    return pol


UNBOUND_DATA = ["www.example.test. 300 IN A 198.51.100.7", "www.example.test. 300 IN AAAA 2001:db8:7::7",
                "pay.isp.test. 300 IN A 198.51.100.9", "shop.pay.isp.test. 300 IN A 198.51.100.10"]


class Running:
    """One in-process daemon: ``cmd`` dispatches a command as the admin API would."""

    def __init__(self, d: Daemon, task: asyncio.Task, dns_port: int, page_port: int):
        self.d, self.task, self.dns_port, self.page_port = d, task, dns_port, page_port

    @property
    def comp(self) -> Suspensions:
        return next(c for c in self.d.components if isinstance(c, Suspensions))

    async def cmd(self, name: str, **payload) -> dict:
        return await self.d.commands.dispatch(name, payload, actor="test", source="test")

    def metric(self, name: str, **labels) -> float | None:
        return self.d.registry.get_sample_value(name, labels)

    async def ask(self, name: str, rdtype: str = "A", source: str = "127.0.0.1"):
        q = dns.message.make_query(name, rdtype, use_edns=0)
        return await asyncio.to_thread(dns.query.udp, q, "127.0.0.1", port=self.dns_port, timeout=3, source=source)

    async def page(self, path: str = "/", host: str = "anything.example", source: str = "127.0.0.1"):
        def get():
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", self.page_port, timeout=5, source_address=(source, 0))
            c.request("GET", path, headers={"Host": host})
            r = c.getresponse()
            return r.status, r.read().decode()
        return await asyncio.to_thread(get)

    async def stop(self) -> None:
        self.d.stop_event.set()
        assert await asyncio.wait_for(self.task, 15) == 0


async def start_daemon(pol: Path, state: Path, clock, page_port: int, *, more_types=(), **options) -> Running:
    """``more_types``: components after these three (the MQTT bridge); ``options``: more Options."""
    dns_port = free_port(kind=2)
    opts = Options(policies=str(pol), state_dir=str(state), watch=False, dns_listen=[("127.0.0.1", dns_port)],
                   metrics_listen=("127.0.0.1", free_port()), admin_listen=("127.0.0.1", free_port()), **options)
    d = Daemon(opts, clock=clock, types=[DnsGuard, Maintenance, Suspensions, *more_types])
    task = asyncio.create_task(d.run())
    await until(lambda: d._ready or task.done(), what="daemon ready")
    assert d._ready, "daemon did not become ready"
    return Running(d, task, dns_port, page_port)


def ede(r) -> list[tuple[int, str]]:
    return [(o.code, o.text or "") for o in r.options if isinstance(o, dns.edns.EDEOption)]


def addresses(r) -> list[str]:
    return sorted(rr.to_text() for rrset in r.answer for rr in rrset)


def http(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


__all__ = ["T0", "PAGE_A", "PAGE_AAAA", "UNBOUND_DATA", "Unbound", "Running", "addresses", "ede", "policy_dir",
           "start_daemon", "until"]
