"""Who may query the guard (an open resolver is an amplifier), like unbound's ``access-control``.

Allowed: loopback, every customer's prefixes (found by the customer lookup itself), the
prefixes of ``dns.access_control.allow`` (the subscriber address pools, other networks we
serve) and, through :attr:`AccessList.live`, addresses of live sessions. Every other source
is answered REFUSED (EDE 18): a guard reachable from outside that answers everyone is an
open resolver, used to amplify attacks on third parties.

The engine asks only on a miss of its per-address customer cache, so the check costs nothing
for a client seen before. Whoever changes the live-session set calls ``Engine.forget_hosts()``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ..subscribers.prefixes import PrefixIndex

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class AccessList:
    def __init__(self, allow=(), live: Callable[[str], bool] | None = None):
        self.allow = tuple(allow)
        self.index = PrefixIndex((p, True) for p in (*LOOPBACK, *self.allow))
        # hook for the session table of dynamic addresses: live(address) -> True while a session holds it
        self.live = live

    def allows(self, host: str) -> bool:
        """``host`` (an address string) is not a customer's: may it query anyway?"""
        if self.index.lookup(host):
            return True
        live = self.live
        return bool(live is not None and live(host))
