"""Reusable DNS test fixtures: a real unbound on a free loopback port, a DNS test policy.

``Unbound(tmp, local_data=[...]).start()`` runs unbound in the foreground with
``local-zone: "." static`` (it answers only from local-data, never recurses, so
no traffic leaves loopback). ``dns_policy(tmp, upstream_port, ...)`` writes a
policy directory whose customers sit on loopback addresses so that test
clients can pick their customer with a source address:

  127.0.0.1/32 c-home     (security lists apply)
  127.0.0.2/32 c-optout   (policy: security_optout true)
  127.0.0.3/32 c-optin    (opted in to the optional list)
  ::1/128      c-v6
  127.0.0.9    unknown    (unknown_clients: protect)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
from pathlib import Path

import dnslib

from helpers import SHARED_DATA, free_port, wait_for

MALTRAIL = SHARED_DATA / "maltrail"

STANDIN_TRAIL = """\
# Stand-in trail (shared/data absent): same shapes as Maltrail files
# Reference: https://example.invalid/report

66.210.228.178:443
bardubar.com
evil-cc.example:8080
http://regionsnews.net/OEqhU8Lg5
limitededitionphotos.nl/wp-includes/ID3/jre.zip
 1.117.86.121:801
"""


class Unbound:
    def __init__(self, workdir: Path, local_data: list[str] = (), port: int | None = None,
                 extra: str = ""):
        self.dir = Path(workdir) / f"unbound-{id(self)}"
        self.dir.mkdir(parents=True)
        self.port = port or free_port()
        self.local_data = list(local_data)
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def conf(self) -> str:
        data = "\n".join(f'    local-data: "{rr}"' for rr in self.local_data)
        return textwrap.dedent(f"""\
            server:
                interface: 127.0.0.1
                port: {self.port}
                do-daemonize: no
                use-syslog: no
                logfile: ""
                verbosity: 0
                username: ""
                chroot: ""
                directory: "{self.dir}"
                pidfile: "{self.dir}/unbound.pid"
                do-ip6: no
                num-threads: 1
                module-config: "iterator"
                access-control: 127.0.0.0/8 allow
                local-zone: "." static
            """) + data + "\n" + self.extra + "\nremote-control:\n    control-enable: no\n"

    def start(self) -> Unbound:
        if shutil.which("unbound") is None:
            import pytest
            pytest.skip("unbound is not installed (tests/run-all.sh installs it)")
        conf = self.dir / "unbound.conf"
        conf.write_text(self.conf())
        self.log = open(self.dir / "unbound.log", "wb")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(self._answers, 10, what=f"unbound on 127.0.0.1:{self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"unbound exited: {(self.dir / 'unbound.log').read_text()}")
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01"  # . SOA
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(q, ("127.0.0.1", self.port))
            try:
                return s.recv(512)[:2] == b"\x12\x34"
            except OSError:
                return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()


CUSTOMERS = """\
plans:
  - id: home
    name: Home
    down: 100mbit
customers:
  - id: c-home
    name: Home customer
    prefixes: [127.0.0.1/32]
    plan: home
  - id: c-optout
    name: Opted-out customer
    prefixes: [127.0.0.2/32]
    plan: home
    security_optout: true
  - id: c-optin
    name: Opted-in customer
    prefixes: [127.0.0.3/32]
    plan: home
    optional_lists: [ads]
  - id: c-v6
    name: IPv6 customer
    prefixes: ["::1/128"]
    plan: home
"""

RPZ = """\
$TTL 300
$ORIGIN rpz.test.
@   IN SOA localhost. root.localhost. ( 1 3600 600 86400 300 )
    IN NS  localhost.
rpz-exact.example      CNAME .
*.rpz-wild.example     CNAME .
nodata.example         CNAME *.
*.pass.rpz-wild.example CNAME rpz-passthru.
sink.example           A 10.9.9.9
32.1.0.0.127.rpz-ip    CNAME .
"""


def dns_policy(tmp: Path, upstream_port: int | None, *, upstreams: str | None = None,
               extra_lists: str = "", unknown: str = "protect") -> Path:
    """A complete policy directory for DNS tests (copies the example's other sections)."""
    from helpers import copy_policies
    pol = copy_policies(tmp)
    (pol / "customers.yaml").write_text(CUSTOMERS)
    for f in ("emergency.yaml", "maintenance.yaml"):
        if (pol / f).exists():
            (pol / f).unlink()
    lists = pol / "lists"
    (lists / "mandatory.txt").write_text("# mandatory\nmandatory-blocked.invalid\ncsam.example\n")
    (lists / "ads-hosts.txt").write_text("0.0.0.0 ads.tracker.example\n127.0.0.1 localhost\n")
    (lists / "local.rpz").write_text(RPZ)
    if (MALTRAIL / "emotet.txt").exists():
        shutil.copy(MALTRAIL / "emotet.txt", lists / "cc-maltrail.txt")
        with open(lists / "cc-maltrail.txt", "a") as f:
            f.write("\n" + STANDIN_TRAIL)
    else:
        (lists / "cc-maltrail.txt").write_text(STANDIN_TRAIL)
    if upstreams is None:
        upstreams = f"""\
    - id: unbound
      address: 127.0.0.1:{upstream_port}
      timeout: 500ms
"""
    (pol / "dns.yaml").write_text(f"""\
dns:
  upstreams:
{upstreams}
  unknown_clients: {unknown}
  detection_retention: 30d
  lists:
    - id: csam
      class: mandatory
      format: domains
      source: lists/mandatory.txt
    - id: cc
      class: security
      format: maltrail
      source: lists/cc-maltrail.txt
      allow: [allowed.bardubar.com]
    - id: rpz
      class: security
      format: rpz
      source: lists/local.rpz
    - id: ads
      class: optional
      format: hosts
      source: lists/ads-hosts.txt
      action: sinkhole
      sinkhole_a: 0.0.0.0
      sinkhole_aaaa: "::"
{extra_lists}""")
    return pol


def a_response(name: str, qid: int, *addrs: str) -> bytes:
    """A resolver's NOERROR answer to an A question for NAME (id QID) with ADDRS, TTL 60."""
    q = dnslib.DNSRecord.question(name, "A")
    q.header.id = qid
    r = q.reply()
    for a in addrs:
        r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A(a), ttl=60))
    return r.pack()
