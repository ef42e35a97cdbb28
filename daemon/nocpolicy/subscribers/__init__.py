"""Who a client is and what applies to it: one owner, changes pushed to its readers.

``model.py`` (Subscriber, Decision, Change), ``view.py`` (the pure builder of the
immutable per-customer view and the address lookup), ``prefixes.py`` (longest-prefix
index), ``optouts.py`` (the persisted opt-out decisions), ``component.py`` (the owner:
takes in the policy and runtime decisions, pushes every change), ``api.py`` (the
Protocols consumers are handed). See docs/architecture.md, "Subscribers".
"""
