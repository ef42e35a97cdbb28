"""Command-line options of nocpolicyd (the embedded default needs none)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from . import __version__
from .policy.fields import parse_hostport

DEFAULT_DNS = "127.0.0.1:8053"
DEFAULT_METRICS = "127.0.0.1:9753"
DEFAULT_ADMIN = "127.0.0.1:9754"


@dataclass
class Options:
    policies: str = "./policies"
    state_dir: str = "./state"
    dns_listen: list[tuple[str, int]] = field(default_factory=lambda: [parse_hostport(DEFAULT_DNS)])
    metrics_listen: tuple[str, int] = parse_hostport(DEFAULT_METRICS)
    admin_listen: tuple[str, int] = parse_hostport(DEFAULT_ADMIN)
    log_format: str = "text"
    log_level: str = "info"
    workers: int = 1
    dns_io: str = "auto"              # auto | native | batched | asyncio
    watch: bool = True
    role: str = "standalone"          # standalone | controller | agent
    node: str | None = None
    mqtt: str | None = None
    mqtt_password_file: str | None = None
    mqtt_ca: str | None = None
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    enforce: str = "auto"             # auto | linux | off
    customer_listen: tuple[str, int] | None = None     # the customer self-service page; off without it
    customer_link_key: str | None = None               # default <state-dir>/customer-link.key
    customer_tls_cert: str | None = None
    customer_tls_key: str | None = None
    extra: dict = field(default_factory=dict)


def _hostport(s: str) -> tuple[str, int]:
    try:
        return parse_hostport(s)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nocpolicyd",
        description="nocpolicy daemon: DNS guard, emergency priority, maintenance notices. "
                    "With no flags it runs from a checkout on the embedded default.")
    p.add_argument("--version", action="version", version=f"nocpolicyd {__version__}")
    p.add_argument("--policies", metavar="DIR", default="./policies", help="policy directory (default ./policies)")
    p.add_argument("--state-dir", metavar="DIR", default="./state", help="state directory (default ./state)")
    p.add_argument("--dns-listen", metavar="ADDR:PORT", type=_hostport, action="append",
                   help=f"DNS listen address, UDP and TCP; repeatable (default {DEFAULT_DNS})")
    p.add_argument("--metrics-listen", metavar="ADDR:PORT", type=_hostport, default=DEFAULT_METRICS,
                   help=f"Prometheus metrics endpoint (default {DEFAULT_METRICS})")
    p.add_argument("--admin-listen", metavar="ADDR:PORT", type=_hostport, default=DEFAULT_ADMIN,
                   help=f"admin API (default {DEFAULT_ADMIN})")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="DNS worker processes sharing the port with SO_REUSEPORT (default 1)")
    p.add_argument("--dns-io", choices=("auto", "native", "batched", "asyncio"), default="auto",
                   help="UDP I/O of the DNS guard: native (recvmmsg/sendmmsg and the fast paths in C), batched "
                        "(recvmmsg/sendmmsg from Python), asyncio (one system call per packet, portable); "
                        "auto picks the first of these that works here")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument("--no-watch", dest="watch", action="store_false",
                   help="do not reload when policy files change (SIGHUP and `nocpolicyctl reload` still work)")
    p.add_argument("--role", choices=("standalone", "controller", "agent"), default="standalone")
    p.add_argument("--node", metavar="NAME", help="node name (default: settings.node or the host name)")
    p.add_argument("--mqtt", metavar="URL", help="mqtt://user@host:1883 or mqtts://...; MQTT is off without it")
    p.add_argument("--mqtt-password-file", metavar="FILE", help="file (0600) holding the MQTT password")
    p.add_argument("--mqtt-ca", metavar="FILE", help="CA bundle for mqtts://")
    p.add_argument("--mqtt-cert", metavar="FILE", help="client certificate for mqtts://")
    p.add_argument("--mqtt-key", metavar="FILE", help="client key for mqtts://")
    p.add_argument("--enforce", choices=("auto", "linux", "off"), default="auto",
                   help="traffic enforcement backend: auto (Linux nft/tc when privileged and the "
                        "policy names interfaces present here), linux (required), off")
    p.add_argument("--customer-listen", metavar="ADDR:PORT", type=_hostport,
                   help="serve the customer self-service page (Art. 45) here; off without it")
    p.add_argument("--customer-link-key", metavar="FILE",
                   help="key (0600) shared with the member portal for signed links "
                        "(default <state-dir>/customer-link.key, created on first start)")
    p.add_argument("--customer-tls-cert", metavar="FILE", help="serve the customer page over TLS with this certificate")
    p.add_argument("--customer-tls-key", metavar="FILE", help="private key for --customer-tls-cert")
    p.add_argument("--netns", metavar="NAME", help=argparse.SUPPRESS)   # qos: run nft/tc in this netns (tests)
    p.add_argument("--customer-metrics", action="store_true",
                   help="export per-customer utilisation series (high cardinality; off by default)")
    return p


def parse_options(argv: list[str] | None = None) -> Options:
    ns = build_parser().parse_args(argv)
    if ns.workers < 1:
        build_parser().error("--workers must be at least 1")
    return Options(
        policies=ns.policies, state_dir=ns.state_dir,
        dns_listen=ns.dns_listen or [parse_hostport(DEFAULT_DNS)],
        metrics_listen=ns.metrics_listen, admin_listen=ns.admin_listen,
        log_format=ns.log_format, log_level=ns.log_level, workers=ns.workers, dns_io=ns.dns_io,
        watch=ns.watch,
        role=ns.role, node=ns.node, mqtt=ns.mqtt, mqtt_password_file=ns.mqtt_password_file,
        mqtt_ca=ns.mqtt_ca, mqtt_cert=ns.mqtt_cert, mqtt_key=ns.mqtt_key, enforce=ns.enforce,
        customer_listen=ns.customer_listen, customer_link_key=ns.customer_link_key,
        customer_tls_cert=ns.customer_tls_cert, customer_tls_key=ns.customer_tls_key,
        extra={"netns": ns.netns, "customer_metrics": ns.customer_metrics},
    )
