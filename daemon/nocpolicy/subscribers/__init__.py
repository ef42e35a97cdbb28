"""Who a client is and what applies to it: one owner, changes pushed to its readers.

``model.py`` (Subscriber, Decision, Change), ``view.py`` (the pure builder of the
immutable per-customer view and the address lookup), ``prefixes.py`` (longest-prefix
index), ``consent.py`` (consent by purpose: the persisted log, "consented at that time"), ``commands.py``
(consent and the opt-out alias), ``optouts.py`` (the old opt-out table, migrated), ``component.py`` (the owner:
takes in the policy and runtime decisions, pushes every change), ``api.py`` (the
Protocols consumers are handed). See docs/architecture.md, "Subscribers".
"""
