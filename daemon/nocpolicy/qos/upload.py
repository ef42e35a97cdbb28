"""Upload caps (Art. 23 utilisation limits, the customer -> network direction): pure plan and render.

Traffic from customers arrives on a shaped interface (ingress). An ingress qdisc can only
police, so each shaped interface gets an ``ifb`` device: every packet arriving on the
interface is redirected to it (``mirred egress redirect``), and the ifb's egress has an HTB
tree like the download one -- a link class, a default class, and one class per customer
``up`` cap -- classified by source prefix with ``u32`` filters (nft cannot classify there:
the ingress qdisc runs before netfilter).

The redirect uses ``matchall`` when the kernel has it, else ``u32 match u32 0 0`` (this
kernel lacks matchall and basic; ``features.detect`` finds out). u32 filters form a linear
list per protocol: at most :data:`MAX_UP_PREFIXES` per family (hash tables are not built).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:                          # plan.py builds Uploads and imports this module
    from .plan import Entry, InterfaceTree

FILTER_PREFS = ((10, 11), (20, 21))      # (ipv4, ipv6) filter prefs of the two generations
MAX_UP_PREFIXES = 4000                    # u32 nodes per hash bucket: 4095


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


def filter_lines(up: Upload, entries: tuple[Entry, ...], gen: int = 0) -> list[str]:
    """u32 source-prefix filters on the ifb, in generation ``gen``'s prefs."""
    p4, p6 = FILTER_PREFS[gen]
    out = []
    for e in entries:
        v6 = ":" in e.prefix
        out.append(f"filter add dev {up.ifb} parent 1: protocol {'ipv6' if v6 else 'ip'} pref {p6 if v6 else p4} "
                   f"u32 match {'ip6' if v6 else 'ip'} src {e.prefix} flowid 1:{e.minor:x}")
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
