"""The walled garden in nftables (Art. 25): a suspended customer's forwarded traffic is dropped
except DNS, the notice page and (walled-garden mode) the allow list's addresses.

Pure: :func:`walled_plan` (policy + subscriber view -> :class:`WalledPlan`) and
:func:`render_walled` (the nft script, checked against golden files). I/O:
:class:`WalledTable` applies the script in one ``nft -f`` transaction (atomic), reads the
table back (chain, element counts) and restores what the kernel held before on any failure:
the same render -> apply -> read back -> roll back path as the qos plan, in its own table
``inet nocpolicy_suspend`` so neither rewrite touches the other.

The chain is stateless on purpose: a connection opened before the suspension started gets
no "established" pass. Per suspended prefix, forwarded packets pass only when they go to or
come from port 53 (DNS) or the garden (walled-garden: notice page + ``allow_addresses``;
block: the notice page alone); everything else in either direction is counted and dropped.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from ..errors import EnforcementError
from .kernel import Runner
from .render import _set
from .subjects import net_text

TABLE = "nocpolicy_suspend"


@dataclass(frozen=True)
class WalledPlan:
    walled: tuple[str, ...] = ()     # prefixes of walled-garden customers
    blocked: tuple[str, ...] = ()    # prefixes of block customers
    garden: tuple[str, ...] = ()     # notice page and allow_addresses (walled-garden may reach)
    page: tuple[str, ...] = ()       # the notice page (block may reach)

    @property
    def empty(self) -> bool:
        return not self.walled and not self.blocked


def walled_plan(policy, view, live=None) -> WalledPlan:
    """Who is walled in or blocked now and where they may still go (pure): the suspended customers'
    static prefixes and the addresses their live sessions hold (``live``: ``view.live_addresses()``,
    a snapshot taken on the event loop; an address inside the customer's static prefix is skipped)."""
    walled, blocked = [], []
    sessions: dict[str, list] = {}
    for net, cid in (live if live is not None else view.live_addresses()):
        if cid in view.suspended:
            sessions.setdefault(cid, []).append(net)
    for sub in sorted(view.suspended.values(), key=lambda s: s.customer):
        mode = sub.suspension.mode
        target = walled if mode == "walled-garden" else blocked if mode == "block" else None
        if target is not None:
            target += [str(p) for p in sub.prefixes] + _live(sub.prefixes, sessions.get(sub.customer, ()))
    s = policy.suspension
    page = [str(ipaddress.ip_network(a)) for a in s.notice_page.addresses]
    garden = page + [str(p) for p in s.allow_addresses]
    return WalledPlan(tuple(walled), tuple(blocked), tuple(dict.fromkeys(garden)), tuple(page))


def _live(static, nets) -> list[str]:
    out = []
    for n in sorted(nets):
        net = ipaddress.ip_network(net_text(n))
        if not any(net.version == p.version and net.subnet_of(p) for p in static):
            out.append(str(net))
    return out


def _split(prefixes) -> tuple[list[str], list[str]]:
    v4 = [p for p in prefixes if ":" not in p]
    return v4, [p for p in prefixes if ":" in p]


def _rules(fam: str, who: str, where: str) -> list[str]:
    return [f"\t\t{fam} saddr @{who} meta l4proto {{ tcp, udp }} th dport 53 accept",
            f"\t\t{fam} daddr @{who} meta l4proto {{ tcp, udp }} th sport 53 accept",
            f"\t\t{fam} saddr @{who} {fam} daddr @{where} accept",
            f"\t\t{fam} daddr @{who} {fam} saddr @{where} accept",
            f"\t\t{fam} saddr @{who} counter drop",
            f"\t\t{fam} daddr @{who} counter drop"]


def render_walled(plan: WalledPlan) -> str:
    """The whole table as one nft script (pure): replaces whatever the table held."""
    out = [f"# nocpolicy suspensions: {len(plan.walled)} walled-garden, {len(plan.blocked)} blocked prefix(es)",
           f"add table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for name, items in (("walled", plan.walled), ("blocked", plan.blocked), ("garden", plan.garden),
                        ("page", plan.page)):
        v4, v6 = _split(items)
        out.append(_set(f"{name}4", "ipv4_addr", v4, interval=True, merge=True))
        out.append(_set(f"{name}6", "ipv6_addr", v6, interval=True, merge=True))
    chain = ["\tchain forward {", "\t\ttype filter hook forward priority filter - 10; policy accept;"]
    for fam, n in (("ip", "4"), ("ip6", "6")):
        chain += _rules(fam, f"walled{n}", f"garden{n}") + _rules(fam, f"blocked{n}", f"page{n}")
    chain.append("\t}")
    out.append("\n".join(chain))
    out.append("}")
    return "\n".join(out) + "\n"


class WalledTable:
    """Keeps table ``inet nocpolicy_suspend`` equal to the last plan applied (or restores the previous)."""

    def __init__(self, runner: Runner):
        self.runner = runner
        self.current: WalledPlan | None = None
        self._text: str | None = None
        self._snapshot = False

    def apply(self, plan: WalledPlan) -> None:
        """Apply, read back, roll back on failure (EnforcementError saying what failed and what was restored)."""
        if plan == self.current:
            return
        old = self._previous()
        script = render_walled(plan)
        try:
            r = self.runner.run("nft", "-f", "-", stdin=script)
            if r.rc != 0:
                raise EnforcementError(f"nft -f (table inet {TABLE}) refused the rules: {r.err.strip()[:300]}")
            self._verify(plan)
        except EnforcementError as exc:
            raise EnforcementError(f"{exc}; {self._restore(old)}") from None
        self.current, self._text = plan, script

    def _previous(self) -> str | None:
        if self._text is not None or self._snapshot:
            return self._text
        r = self.runner.run("nft", "list", "table", "inet", TABLE)
        self._snapshot = True
        self._text = f"add table inet {TABLE}\ndelete table inet {TABLE}\n{r.out}" if r.rc == 0 else None
        return self._text

    def _verify(self, plan: WalledPlan) -> None:
        chains = json.loads(self.runner.check("nft", "-j", "list", "chains", "inet")).get("nftables", [])
        if not any(o.get("chain", {}).get("table") == TABLE and o["chain"].get("name") == "forward" for o in chains):
            raise EnforcementError(f"verify: table inet {TABLE} has no forward chain")
        for name, items in (("walled", plan.walled), ("blocked", plan.blocked)):
            for fam, want in zip("46", _split(items), strict=True):
                got = json.loads(self.runner.check("nft", "-j", "list", "set", "inet", TABLE, f"{name}{fam}"))
                elems = [e for o in got.get("nftables", []) for e in (o.get("set", {}).get("elem") or [])]
                if bool(elems) != bool(want):          # auto-merge may join adjacent prefixes: count loosely
                    raise EnforcementError(f"verify: set {name}{fam} holds {len(elems)} element(s), "
                                           f"expected {len(want)}")

    def _restore(self, old: str | None) -> str:
        if old is None:
            self.runner.run("nft", "delete", "table", "inet", TABLE)
            return "table removed (there was none before)"
        r = self.runner.run("nft", "-f", "-", stdin=old)
        return "previous rules restored" if r.rc == 0 else f"restore failed: {r.err.strip()[:200]}"
