"""Per-customer suspension and restriction (Art. 25, 27) and abolition notices (Art. 26).

``rules.py`` (pure: validation, timing, Art. 27 terminable), ``letters.py`` (the notices'
text, pure, and their e-mail channel in the shared outbox), ``component.py`` (commands,
timed start/end, metrics). The records and the ``suspension`` decision kind belong to the
subscribers area (subscribers/suspensions.py, subscribers/model.py). See docs/suspension.md.
"""
