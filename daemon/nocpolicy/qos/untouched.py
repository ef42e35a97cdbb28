"""Which session changes cannot alter the qos plan, so the re-render they would start is skipped.

A re-render walks every live session (a million after a restart); most session changes at ISP
scale cannot change what it produces. The plan depends on the live sessions only through
:func:`subjects.live_by_customer` (every customer's live addresses that overlap no static
prefix and no wider live one) and only for customers that reach the plan: a customer with a
cap class (a plan's ``down``/``up``, an emergency profile's ``customer_cap`` or the plan's
``emergency_down``, a runtime ``rate_cap``, each below the fastest shaped link), or with a
priority role (``public_safety``, a profile's priority or trusted-DSCP customer). An implicit
customer (known only from a session) gets the policy's defaults: it has a class when a
profile's ``customer_cap`` applies to everyone, none otherwise.

A session change ``(op, addresses, customer, implicit)`` cannot alter the plan when:

* its customer is None (unattributed: qos never sees it, it shadows nobody); or
* none of its addresses is *nested* with another live address (contains one or lies inside
  one: ``LiveTable.nested``, which answers "yes" when it cannot tell cheaply), so it shadows
  nobody and nobody shadows it; and either

  - the last re-render planned from the view (basis :data:`PLANNED`) and its customer reaches
    nothing (:func:`reaches_plan` is False): its addresses go into no set, map or class; or
  - the last re-render was refused for more cap classes than HTB allows (basis
    :data:`OVER_LIMIT`) and the change is a start: a new address that shadows nobody can only
    add present customers (and classes), so the plan stays refused.

Anything else re-renders in full: a runtime decision or a policy change (no session list in
the change), a nested address, a stop while over the limit, a change of a customer that
reaches the plan, or more than :data:`MAX_CHANGES` changes since the last re-render.
``tests/test_qos_untouched.py`` checks the rule against full re-renders of random session sets.
"""

from __future__ import annotations

from .plan import classes_needed

PLANNED = "planned"            # the plan in force was built from the view as of the last re-render
OVER_LIMIT = "over-limit"      # the last re-render was refused: too many cap classes
MAX_CHANGES = 100_000          # changes remembered between re-renders; beyond, re-render in full


def reaches_plan(policy, view, cid: str, uploads: bool) -> bool:
    """Would customer ``cid``'s live addresses appear in the plan (a cap class below the fastest
    link, or a priority role)?"""
    c = policy.customers_by_id.get(cid)
    if c is not None and (c.public_safety or any(cid in p.priority_customers or cid in p.trusted_dscp.customers
                                                 for p in policy.profiles)):
        return True
    sub = view.get(cid)
    top = max((i.rate for i in policy.interfaces), default=0)
    down, up = classes_needed(policy, c.plan if c is not None else None,
                              sub.rate_cap if sub is not None else None, top)
    return down > 0 or (uploads and up)


def plan_untouched(basis: str | None, policy, view, changes, live, uploads: bool) -> bool:
    """True if no change in ``changes`` (session changes since the last re-render, in order)
    can alter the plan that re-render produced or refused (``basis``); ``live`` is the live
    session table after the changes (``nested``); ``uploads``: upload caps are shaped."""
    if basis not in (PLANNED, OVER_LIMIT) or live is None or not hasattr(live, "nested"):
        return False
    nested = live.nested
    reach: dict[str, bool] = {}
    default = None                 # reaches_plan of an implicit customer without a decision
    by_id = policy.customers_by_id
    for op, addrs, cid, _implicit in changes:
        if cid is None:
            continue
        if basis == OVER_LIMIT:
            if op != "+":
                return False
        else:
            hit = reach.get(cid)
            if hit is None:
                if cid not in by_id and view.get(cid) is None:
                    if default is None:
                        default = reaches_plan(policy, view, cid, uploads)
                    hit = default
                else:
                    hit = reaches_plan(policy, view, cid, uploads)
                reach[cid] = hit
            if hit:
                return False
        for fam, value, plen in addrs:
            if nested(fam, value, plen):
                return False
    return True
