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


def set_many(store: Store, values: dict, *, actor: str, note: str, now: str) -> None:
    """Runtime opt-outs decided elsewhere (the fleet controller): customer -> bool, None = withdrawn
    (the policy's value applies again); one transaction, one audit record."""
    rows = [(cid, int(v), note, actor, now) for cid, v in values.items() if v is not None]
    gone = [(cid,) for cid, v in values.items() if v is None]
    with store.transaction() as tx:
        tx.executemany("INSERT INTO dns_optout (customer, optout, reason, actor, ts) VALUES (?,?,?,?,?) "
                       "ON CONFLICT(customer) DO UPDATE SET optout=excluded.optout, reason=excluded.reason, "
                       "actor=excluded.actor, ts=excluded.ts", rows)
        tx.executemany("DELETE FROM dns_optout WHERE customer=?", gone)
        store.audit(actor, "dns.optout.adopt", "fleet:optout", None,
                    {"set": {c: bool(v) for c, v, *_ in rows[:100]}, "withdrawn": [c for (c,) in gone[:100]],
                     "count": len(values), "note": note}, db=tx)
