"""The ``suspension:`` section (Art. 25-27): the notice page, the walled garden's allow list,
whom a suspended customer contacts, and when an unresolved suspension becomes terminable."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from .fields import Invalid, Obj, as_hostport, as_ip, as_str, as_text, int_range, list_of, obj
from .nodes import Loc

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def valid_name(s: str) -> str:
    """A DNS name (letters, digits, '-', dots; 253 at most), lower-case, without the trailing dot;
    ValueError naming what is wrong."""
    n = s.strip().lower().rstrip(".")
    if not n or len(n) > 253 or not all(_LABEL.match(x) for x in n.split(".")):
        raise ValueError(f"{s!r} is not a DNS name (labels of letters, digits and '-', dots between)")
    return n


def as_name(node, _p=None) -> str:
    try:
        return valid_name(as_str(node))
    except ValueError as exc:
        raise Invalid(str(exc)) from None


@dataclass(frozen=True)
class NoticePage:
    listen: tuple[str, int] | None = None                    # off until configured
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()   # what DNS answers
    listen_loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)       # file:line of ``listen``

    @property
    def a(self) -> str | None:
        return next((str(x) for x in self.addresses if x.version == 4), None)

    @property
    def aaaa(self) -> str | None:
        return next((str(x) for x in self.addresses if x.version == 6), None)


@dataclass(frozen=True)
class SuspensionSettings:
    notice_page: NoticePage = NoticePage()
    allow: tuple[str, ...] = ()                  # names (and their subdomains) a walled garden forwards
    allow_addresses: tuple = ()                  # prefixes nftables lets through (payment, support)
    contact_ja: str = "カスタマーサポート"
    contact_en: str = "customer support"
    provider: str = "nocpolicy ISP"
    terminable_months: int = 2                   # Art. 27(1): two months (nonpayment: at once)
    abolition_months: int = 3                    # Art. 26: three months' notice
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


def _page(o: Obj) -> NoticePage:
    listen = o.get("listen", as_hostport(80), None)
    addrs = o.get("address", list_of(as_ip, unique=True), None)
    if addrs is None and listen is not None:
        addrs = (ipaddress.ip_address(listen[0]),)
    return NoticePage(listen, tuple(addrs or ()), o.locs.get("listen", o.node.loc))


def _prefix(node, _p=None):
    s = as_str(node).strip()
    try:
        return ipaddress.ip_network(s, strict=True)
    except ValueError as exc:
        raise Invalid(f"{s!r} is not an IPv4/IPv6 prefix: {exc}") from None


def _contact(o: Obj) -> tuple[str, str]:
    return o.req("ja", as_text), o.req("en", as_text)


def _suspension(o: Obj) -> SuspensionSettings:
    contact = o.get("contact", obj(_contact), None) or (SuspensionSettings.contact_ja, SuspensionSettings.contact_en)
    return SuspensionSettings(
        notice_page=o.get("notice_page", obj(_page), NoticePage()) or NoticePage(),
        allow=o.get("allow", list_of(as_name, unique=True), ()) or (),
        allow_addresses=o.get("allow_addresses", list_of(_prefix, unique=True), ()) or (),
        contact_ja=contact[0], contact_en=contact[1],
        provider=o.get("provider", as_text, SuspensionSettings.provider),
        terminable_months=o.get("terminable_months", int_range(1, 24), 2),
        abolition_months=o.get("abolition_months", int_range(1, 24), 3),
        loc=o.node.loc)


read_suspension = obj(_suspension)
