"""Who had an address at a time: the policy's static prefixes first, then the session
history's ``whois`` (RADIUS and Kea sessions, CGNAT port blocks). Used for NICT advisories
and for the victims of attack records (ICT-ISAC exports).

The two sources are handed in by app.wire (the subscribers area's ``static_owner`` and the
sessions area's ``whois_at``); without the sessions area only static prefixes attribute.
Static prefixes are those of the policy in force (a customer whose prefix moved since is
attributed as of now: documented in docs/advisories.md).
"""

from __future__ import annotations

from collections.abc import Callable

StaticOwner = Callable[[str], str | None]
Whois = Callable[[str, float, int | None], dict]


class Attribution:
    def __init__(self, static_owner: StaticOwner | None = None, whois: Whois | None = None):
        self.static_owner = static_owner
        self.whois = whois

    def attribute(self, address: str, ts: float, port: int | None) -> tuple[str | None, str]:
        """(customer id, "") or (None, why not). Blocking (the history is in SQLite)."""
        owner = self.static_owner(address) if self.static_owner is not None else None
        if owner is not None:
            return owner, ""
        if self.whois is None:
            return None, "no static prefix holds the address and session history is not available"
        try:
            out = self.whois(address, ts, port)
        except ValueError as exc:
            return None, str(exc)
        if out.get("unattributed"):
            return None, out["unattributed"]
        customers = sorted({m["customer"] for m in out.get("matches", []) if m["customer"]})
        if len(customers) > 1:
            return None, f"ambiguous: sessions of {len(customers)} customers held the address at that time"
        return customers[0], ""
