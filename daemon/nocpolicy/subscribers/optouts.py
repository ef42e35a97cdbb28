"""The opt-out table of state directories from before consent by purpose (``dns_optout``).

Opt-outs are now the ``cc-blocking`` consent (``consent.py``); the first consent migration
carries these rows over. The table's migrations stay so that an old state directory is
brought up to date in order.
"""

from __future__ import annotations

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
