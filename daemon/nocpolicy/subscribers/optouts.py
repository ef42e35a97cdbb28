"""Security-list opt-out decisions (Art. 45(4): "at any time"), persisted with an audit trail.

Effective value for a customer: the runtime record in the state store if one
exists (the customer's latest decision), else the policy's
``customers[].security_optout``. Every change writes an audit record in the same
transaction. The table keeps its historical name (``dns_optout``, migrations of
``dns.optout``) so that existing state directories carry on.
"""

from __future__ import annotations

from ..store import Store
from .model import Decisions

MIGRATIONS = (
    """
    CREATE TABLE dns_optout (
        customer TEXT PRIMARY KEY,
        optout   INTEGER NOT NULL,
        reason   TEXT NOT NULL DEFAULT '',
        actor    TEXT NOT NULL,
        ts       TEXT NOT NULL
    );
    """,
)


class OptoutStore:
    def __init__(self, store: Store, clock):
        self.store = store
        self.clock = clock
        store.migrate("dns.optout", MIGRATIONS)

    def records(self) -> dict[str, dict]:
        return {r["customer"]: dict(r) for r in self.store.all("SELECT * FROM dns_optout")}

    def set(self, customer: str, optout: bool, *, reason: str, actor: str, before: bool) -> dict:
        now = self.clock.now().isoformat()
        with self.store.transaction() as tx:
            tx.execute("INSERT INTO dns_optout (customer, optout, reason, actor, ts) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(customer) DO UPDATE SET optout=excluded.optout, reason=excluded.reason, "
                       "actor=excluded.actor, ts=excluded.ts", (customer, int(optout), reason, actor, now))
            self.store.audit(actor, "dns.optout.set", f"customer:{customer}", {"security_optout": before},
                             {"security_optout": optout, "reason": reason}, db=tx)
        return {"customer": customer, "optout": optout, "reason": reason, "actor": actor, "ts": now}


def decisions_of(records: dict[str, dict]) -> Decisions:
    """The runtime decisions in the store, as Decisions."""
    return Decisions({("optout", cid): bool(r["optout"]) for cid, r in records.items()})
