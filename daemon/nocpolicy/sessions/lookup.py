"""Client address -> customer id over static prefixes and live sessions.

Static prefixes (the policy) are looked up first: a session address inside
another customer's static prefix is a conflict the static prefix wins (the book
counts and logs it when the session starts). Otherwise the live session holding
the address (longest prefix first) names the customer.
"""

from __future__ import annotations

from .table import LiveTable


class ClientLookup:
    """Has the ``lookup(host) -> customer id | None`` of a static PrefixIndex, so readers
    (the DNS engine) take it in its place."""

    __slots__ = ("static", "live", "size")

    def __init__(self, static, live: LiveTable):
        self.static = static
        self.live = live
        self.size = getattr(static, "size", 0)

    def lookup(self, host: str) -> str | None:
        cid = self.static.lookup(host)
        if cid is not None:
            return cid
        s = self.live.lookup(host)
        return s.customer if s is not None else None
