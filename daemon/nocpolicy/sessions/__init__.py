"""Dynamic subscriber sessions: RADIUS accounting and Kea leases feed a live session
table (who holds which address now) and a durable history (who held it then)."""
