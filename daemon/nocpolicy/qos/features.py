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
    redirect: str | None = None      # how arrivals reach an ifb (upload caps): matchall | u32 | None

    def as_dict(self) -> dict:
        return {"detected": self.detected, "leaf": self.leaf, "available": self.available, "detail": self.detail,
                "upload_redirect": self.redirect}

    def upload_missing(self) -> str | None:
        """Why upload caps cannot be enforced here (None: they can)."""
        if self.redirect:
            return None
        if not self.detected:
            return f"kernel features {self.detail.removeprefix('not detected: ') or 'not detected'}"
        need = [k for k in ("ifb", "ingress", "u32_mirred") if not self.available.get(k)]
        return f"the kernel lacks {', '.join(need) or 'a redirect classifier'} (ifb + ingress + mirred redirect)"


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
        have.update(_ingress_probe(run))
        leaf = next((k for k in LEAF_PREFERENCE if have.get(k)), "pfifo")
        missing = [k for k, v in have.items() if not v]
        detail = f"leaf qdisc {leaf}" + (f"; missing: {', '.join(missing)}" if missing else "")
        return Features(True, leaf, have, detail, _redirect(have))
    except EnforcementError as exc:
        return Features(False, detail=f"not detected: {exc}")
    finally:
        host.run("ip", "netns", "del", ns)


_REDIRECT = ("action", "mirred", "egress", "redirect", "dev", "i0")


def _ingress_probe(run: Runner) -> dict[str, bool]:
    """ifb, the ingress qdisc and the classifiers that can redirect every arrival to an ifb
    (matchall, basic, u32 with mirred), tried on the scratch veth."""
    have = {"ifb": run.run("ip", "link", "add", "i0", "type", "ifb").rc == 0}
    have["ingress"] = run.run("tc", "qdisc", "add", "dev", "p0", "handle", "ffff:", "ingress").rc == 0
    for name, match in (("matchall", ("matchall",)), ("basic", ("basic",)),
                        ("u32_mirred", ("u32", "match", "u32", "0", "0"))):
        r = run.run("tc", "filter", "add", "dev", "p0", "parent", "ffff:", "protocol", "all", "pref", "1",
                    *match, *_REDIRECT)
        have[name] = have["ifb"] and have["ingress"] and r.rc == 0
        if r.rc == 0:
            run.run("tc", "filter", "del", "dev", "p0", "parent", "ffff:", "pref", "1")
    return have


def _redirect(have: dict[str, bool]) -> str | None:
    if have.get("matchall"):
        return "matchall"
    return "u32" if have.get("u32_mirred") else None
