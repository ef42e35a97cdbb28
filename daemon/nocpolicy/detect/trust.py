"""Which captured responses to believe, and which addresses a detection may never block.

Passive capture sees forged packets as readily as real ones. A response is believed
only when it comes from a resolver address (``detect.resolvers``; when none are
given: the ``dns.upstreams`` addresses and the node's own addresses) and pairs
with a query seen earlier (the pipeline checks that part). An address in an answer
is never put in the nftables block set when it is loopback, unspecified,
multicast or link-local, one of the upstreams, one of the resolvers, one of the
node's own addresses, a sinkhole address of any list, or inside a prefix of
``detect.never_block``: blocking those would cut customers off their own resolver
or the ISP's infrastructure, which is exactly what a forged answer would try.

``Trust`` is pure; :func:`local_addresses` is the one piece of I/O (``ip -j address``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trust:
    resolvers: frozenset[str]
    never_addrs: frozenset[str]
    never_nets: tuple = ()

    def resolver(self, address: str) -> bool:
        return address in self.resolvers

    def blockable(self, address: str) -> bool:
        if address in self.never_addrs:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local or ip.is_reserved:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            return self.blockable(str(ip.ipv4_mapped))
        return not any(ip.version == net.version and ip in net for net in self.never_nets)


def build_trust(policy, local: frozenset[str]) -> Trust:
    """The trust settings for ``policy`` on a node whose own addresses are ``local``."""
    upstreams = {_norm(u.address[0]) for u in policy.dns.upstreams}
    configured = {_norm(str(a)) for a in policy.detect.resolvers}
    resolvers = configured or (upstreams | set(local))
    sinkholes = {_norm(str(a)) for bl in policy.dns.lists for a in (bl.sinkhole_a, bl.sinkhole_aaaa) if a}
    never = upstreams | set(local) | resolvers | sinkholes
    return Trust(frozenset(resolvers), frozenset(never), tuple(policy.detect.never_block))


def _norm(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def local_addresses(command: tuple[str, ...] = ("ip", "-j", "address", "show")) -> frozenset[str]:
    """The node's own addresses (blocking: run in a thread). Empty if ``ip`` is not there."""
    try:
        res = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        data = json.loads(res.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("detect: cannot list the node's addresses (%s); only the configured ones are trusted", exc)
        return frozenset()
    return frozenset(_norm(a["local"]) for link in data for a in link.get("addr_info", ()) if a.get("local"))
