"""Upload caps (Art. 23 utilisation limits, the customer -> network direction): pure plan and render.

Traffic from customers arrives on a shaped interface (ingress). An ingress qdisc can only
police, so each shaped interface gets an ``ifb`` device: every packet arriving on the
interface is redirected to it (``mirred egress redirect``), and the ifb's egress has an HTB
tree like the download one -- a link class, a default class, and one class per customer
``up`` cap -- classified by source prefix with ``u32`` filters (nft cannot classify there:
the ingress qdisc runs before netfilter).

The redirect uses ``matchall`` when the kernel has it, else ``u32 match u32 0 0`` (this
kernel lacks matchall and basic; ``features.detect`` finds out). IPv4 host addresses (what
sessions hold) sit in a 256-bucket u32 hash table on the last octet; other prefixes (static
networks, IPv6) form a linear list per protocol. At most :data:`MAX_UP_PREFIXES` per list or
bucket.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:                          # plan.py builds Uploads and imports this module
    from .plan import Entry, InterfaceTree

FILTER_PREFS = ((10, 11), (20, 21))      # (ipv4, ipv6) filter prefs of the two generations
MAX_UP_PREFIXES = 4000                    # per linear list or hash bucket (u32 allows 4095 nodes)


@dataclass(frozen=True)
class Upload:
    dev: str                  # the shaped interface (traffic from customers arrives here)
    ifb: str                  # the ifb device its arrivals are redirected to
    tree: InterfaceTree       # HTB tree on the ifb (tree.name == ifb; built by plan.upload_tree)


def ifb_name(dev: str) -> str:
    """``<dev>-up`` when that fits Linux's 15 characters, else ``nqup`` + a CRC of the name."""
    name = f"{dev}-up"
    return name if len(name) <= 15 else f"nqup{zlib.crc32(dev.encode()):08x}"


# -- render (tc -batch lines) ---------------------------------------------------------------


HASH_TABLES = (2, 3)                       # the u32 hash table handle of each generation (IPv4 hosts)


def v4_host(prefix: str) -> int | None:
    """The last octet of an IPv4 host address (``a.b.c.d`` or ``/32``): its hash bucket; else None."""
    if ":" in prefix or ("/" in prefix and not prefix.endswith("/32")):
        return None
    return int(prefix.split("/")[0].rsplit(".", 1)[1])


def filter_lines(up: Upload, entries: tuple[Entry, ...], gen: int = 0) -> list[str]:
    """u32 source-prefix filters on the ifb, in generation ``gen``'s prefs. IPv4 host addresses
    (sessions) go into a 256-bucket hash table keyed on the last octet (one lookup, not a walk);
    other prefixes are a linear list tried first."""
    p4, p6 = FILTER_PREFS[gen]
    head = f"filter add dev {up.ifb} parent 1:"
    hosts = [(v4_host(e.prefix), e) for e in entries if v4_host(e.prefix) is not None]
    out = [f"{head} protocol {'ipv6' if ':' in e.prefix else 'ip'} pref {p6 if ':' in e.prefix else p4} "
           f"u32 match {'ip6' if ':' in e.prefix else 'ip'} src {e.prefix} flowid 1:{e.minor:x}"
           for e in entries if v4_host(e.prefix) is None]
    if hosts:
        ht = HASH_TABLES[gen]
        out.append(f"{head} protocol ip pref {p4} handle {ht:x}: u32 divisor 256")
        out += [f"{head} protocol ip pref {p4} u32 ht {ht:x}:{bucket:x}: match ip src {e.prefix.split('/')[0]}/32 "
                f"flowid 1:{e.minor:x}" for bucket, e in hosts]
        out.append(f"{head} protocol ip pref {p4} u32 match ip src 0.0.0.0/0 hashkey mask 0x000000ff at 12 "
                   f"link {ht:x}:")
    return out


def filter_delete_lines(up: Upload, gen: int) -> list[str]:
    p4, p6 = FILTER_PREFS[gen]
    return [f"filter del dev {up.ifb} parent 1: protocol ip pref {p4}",
            f"filter del dev {up.ifb} parent 1: protocol ipv6 pref {p6}"]


def ingress_line(up: Upload) -> str:
    return f"qdisc add dev {up.dev} handle ffff: ingress"


def redirect_line(up: Upload, redirect: str) -> str:
    match = "matchall" if redirect == "matchall" else "u32 match u32 0 0"
    return (f"filter add dev {up.dev} parent ffff: protocol all pref 1 {match} "
            f"action mirred egress redirect dev {up.ifb}")
