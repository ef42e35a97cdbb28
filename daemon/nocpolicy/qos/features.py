"""What the kernel can do, found by trying it in a throwaway network namespace at start.

Modules are global, so a scratch namespace (``nocp-feat-<random>``, deleted at
once) answers for the whole host without touching any real interface.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from ..errors import EnforcementError
from .kernel import Runner, has_net_admin

LEAF_PREFERENCE = ("fq_codel", "sfq", "pfifo")     # best first
_QDISC_ARGS = {"fq_codel": "fq_codel", "sfq": "sfq perturb 10 limit 100", "pfifo": "pfifo limit 10"}
_NFT_PROBE = """table inet nocp_probe {
 map m { type ipv4_addr : classid; flags interval; counter; elements = { 10.0.0.0/8 : 1:20 } }
 chain c { type filter hook postrouting priority mangle; meta priority set ip daddr map @m; }
}
"""


@dataclass
class Features:
    detected: bool
    leaf: str = "pfifo"
    available: dict[str, bool] = field(default_factory=dict)
    detail: str = ""

    def as_dict(self) -> dict:
        return {"detected": self.detected, "leaf": self.leaf, "available": self.available, "detail": self.detail}


def detect() -> Features:
    """Try htb, each leaf qdisc and an nft classid map with ``meta priority``; never raises."""
    if not has_net_admin():
        return Features(False, detail="not detected: no CAP_NET_ADMIN")
    ns = f"nocp-feat-{secrets.token_hex(3)}"
    host = Runner()
    try:
        host.check("ip", "netns", "add", ns)
    except EnforcementError as exc:   # e.g. CAP_NET_ADMIN without CAP_SYS_ADMIN: no scratch namespace
        return Features(False, detail=f"not detected (assuming pfifo): {exc}")
    try:
        run = Runner(ns)
        run.check("ip", "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        run.check("ip", "link", "set", "p0", "up")
        have: dict[str, bool] = {}
        have["htb"] = run.run("tc", "qdisc", "add", "dev", "p0", "root", "handle", "1:", "htb").rc == 0
        if have["htb"]:
            run.run("tc", "class", "add", "dev", "p0", "parent", "1:", "classid", "1:1", "htb", "rate", "1mbit")
        for i, kind in enumerate(LEAF_PREFERENCE):
            r = run.run("tc", "qdisc", "replace", "dev", "p0", "parent", "1:1", "handle", f"{i + 10}:",
                        *_QDISC_ARGS[kind].split())
            have[kind] = r.rc == 0
        have["nft_priority_map"] = run.run("nft", "-f", "-", stdin=_NFT_PROBE).rc == 0
        leaf = next((k for k in LEAF_PREFERENCE if have.get(k)), "pfifo")
        missing = [k for k, v in have.items() if not v]
        detail = f"leaf qdisc {leaf}" + (f"; missing: {', '.join(missing)}" if missing else "")
        return Features(True, leaf, have, detail)
    except EnforcementError as exc:
        return Features(False, detail=f"not detected: {exc}")
    finally:
        host.run("ip", "netns", "del", ns)
