"""The checks of a CSV inventory against the rest of the policy, column by column: ids not
taken by a YAML customer, plans that exist. (Prefix overlaps: customers.check_prefix_overlaps.)
At most ``MAX_PROBLEMS`` of each are listed: a broken export should not flood the log."""

from __future__ import annotations

from .fields import Problems
from .inventory import MAX_PROBLEMS
from .invtable import Inventory


def check_inventory(inv: Inventory, static: dict, plans: dict, problems: Problems) -> None:
    bad: list[tuple[int, str, str]] = []         # (row, path, reason)
    for cid, c in static.items():
        i = inv.index.get(cid)
        if i is not None:
            bad.append((i, f"customers[id={cid}]", f"duplicate id {cid!r} (first defined at {c.loc})"))
    unknown = {k for k, plan in enumerate(inv.plans) if plan is not None and plan not in plans}
    if unknown:
        known = ", ".join(sorted(plans)[:8]) or "none defined"
        plan_of = inv.plan_of
        for i in range(len(inv)):
            if plan_of[i] in unknown:
                bad.append((i, f"customers[id={inv.ids[i]}].plan",
                            f"unknown plan {inv.plans[plan_of[i]]!r} (known: {known})"))
                if len(bad) > 2 * MAX_PROBLEMS:
                    break
    for i, path, reason in sorted(bad)[:MAX_PROBLEMS]:
        problems.add(inv.loc(i), path, reason)
    if len(bad) > MAX_PROBLEMS:
        problems.add(inv.loc(0), "inventory.file", "more rows with unknown plans or taken ids not listed")
