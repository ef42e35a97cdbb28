"""What the notice page shows a client (pure): their suspension's cause, reason, period, how to
resolve it and whom to contact, in Japanese and English; None for a client not suspended."""

from __future__ import annotations

from . import letters


def page_of(view, host: str, policy) -> dict | None:
    sub = view.subscriber(host)
    s = sub.suspension if sub is not None else None
    if s is None:
        return None
    tz = policy.settings.timezone
    cja, cen = letters.CAUSE_TEXT[s.cause]
    mja, men = letters.MODE_TEXT[s.mode]
    rja, ren = letters.RESOLVE_TEXT[s.cause]
    start = letters.local(s.start, tz)
    conf = policy.suspension
    return {"customer": sub.customer, "mode": s.mode, "reason": s.reason,
            "ja": {"cause": cja, "restriction": mja, "resolve": rja, "contact": conf.contact_ja,
                   "period": f"{start} - {letters.local(s.end, tz)}" if s.end else f"{start} から再開まで"},
            "en": {"cause": cen, "restriction": men, "resolve": ren, "contact": conf.contact_en,
                   "period": f"{start} - {letters.local(s.end, tz)}" if s.end else f"from {start} until resumed"},
            "provider": conf.provider, "allow": list(conf.allow)}
