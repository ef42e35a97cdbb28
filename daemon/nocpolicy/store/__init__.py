"""State store: runtime decisions with an audit trail, in SQLite (WAL)."""

from .db import Store

__all__ = ["Store"]
