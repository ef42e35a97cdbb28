"""On a fleet agent: a suspension adopted from the controller is lifted here at its end even when
the controller cannot be heard (broker down, partition), so no node restricts a customer past
the period the notice gave (Art. 25). The controller ends it at the same time and publishes the
lift; this only keeps a cut-off agent from enforcing longer. Nothing else of the controller's
work (letters, terminable, impact records) runs here."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from ..subscribers.suspensions import adopted

log = logging.getLogger(__name__)


def overdue(rows: list[dict], now: dt.datetime) -> list[str]:
    """Customers whose adopted suspension has an end at or before ``now`` (pure)."""
    return [r["customer"] for r in rows if r.get("end") and dt.datetime.fromisoformat(r["end"]) <= now]


def next_end(rows: list[dict], now: dt.datetime) -> dt.datetime | None:
    """The earliest end still to come among the adopted suspensions (pure)."""
    ends = (dt.datetime.fromisoformat(r["end"]) for r in rows if r.get("end"))
    return min((t for t in ends if t > now), default=None)


async def lift_ended(ctx) -> tuple[int, dt.datetime | None]:
    """Lift the adopted suspensions whose end passed; returns (how many, the next end)."""
    rows = await asyncio.to_thread(adopted, ctx.store)
    now = ctx.clock.now()
    gone = overdue(rows, now)
    if gone and ctx.subscribers is not None:
        await ctx.subscribers.adopt("suspension", dict.fromkeys(gone), actor="timer",
                                    note="the fleet suspension's end passed: lifted on this node")
        log.info("fleet suspension(s) of %s ended at their time: lifted on this node (the controller "
                    "publishes the same when it is heard)", ", ".join(gone[:20]))
    return len(gone), next_end(rows, now)
