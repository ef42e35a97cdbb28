"""The ``advisories:`` section: NICT advisories (Art. 45(3)) turned into customer cases
(docs/advisories.md)."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Obj, as_duration, obj

DAY = 86400.0


@dataclass(frozen=True)
class AdvisorySettings:
    dedup_window: float = 7 * DAY        # reports of one customer+finding within this join one case
    retention: float = 365 * DAY         # finished cases (resolved, closed, unattributable) kept this long


def _advisories(o: Obj) -> AdvisorySettings:
    d = AdvisorySettings()
    s = AdvisorySettings(dedup_window=o.get("dedup_window", as_duration, d.dedup_window) or d.dedup_window,
                         retention=o.get("retention", as_duration, d.retention) or d.retention)
    if not 3600 <= s.dedup_window <= 90 * DAY:
        o.problems.add(o.locs.get("dedup_window", o.node.loc), f"{o.node.path}.dedup_window",
                       "must be between 1h and 90d")
    if not 7 * DAY <= s.retention <= 5 * 365 * DAY:
        o.problems.add(o.locs.get("retention", o.node.loc), f"{o.node.path}.retention",
                       "must be between 7d and 1825d")
    return s


read_advisories = obj(_advisories)
