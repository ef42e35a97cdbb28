"""Customer id -> Subscriber where a CSV inventory's customers are built when asked for.

A ``SubscriberMap`` is a dict of the subscribers built eagerly (the unknown client, the
YAML customers, every customer a runtime decision names) that also answers for each
customer of the policy's CSV inventory (policy/invtable.py): ``map[cid]``, ``get``, ``in``
build that customer's subscriber from its row (``subscriber_of``, the one rule) and keep
it in a bounded cache. A million inventory customers without a decision cost no
Subscriber until a query, a command or a consumer asks for one. A dict copy
(``dict(m)``) holds the eager entries only; ``copy()`` keeps the inventory.

The cache is shared by the views of one set of decisions across inventory reloads; an
entry is used only where it is right: built from the same inventory, or from the base a
reload reused rows from when that customer's row did not change.
"""

from __future__ import annotations

from collections.abc import Callable

KEPT = 65_536         # lazily built subscribers kept (the busiest customers); then built per lookup


class _Cache(dict):
    """cid -> (inventory it was built from, Subscriber), bounded."""

    def put(self, cid: str, inv, sub) -> None:
        if len(self) >= KEPT:
            self.clear()
        self[cid] = (inv, sub)


def _valid_for(entry_inv, inv, cid: str) -> bool:
    if entry_inv is inv:
        return True
    if inv.base() is entry_inv:
        return cid not in inv.changed
    if entry_inv.base() is inv:
        return cid not in entry_inv.changed
    return False


class SubscriberMap(dict):
    __slots__ = ("inventory", "build", "cache")

    def __init__(self, explicit=(), inventory=None, build: Callable | None = None, cache: _Cache | None = None):
        super().__init__(explicit)
        self.inventory = inventory      # invtable.Inventory or None
        self.build = build              # Customer -> Subscriber (subscriber_of under the decisions)
        self.cache = cache if cache is not None else _Cache()

    def lazy(self, cid) -> object | None:
        """The subscriber of inventory customer ``cid`` not built eagerly, or None."""
        inv = self.inventory
        if inv is None or not isinstance(cid, str) or cid not in inv.index:
            return None
        hit = self.cache.get(cid)
        if hit is not None and _valid_for(hit[0], inv, cid):
            return hit[1]
        sub = self.build(inv.customer(cid))
        self.cache.put(cid, inv, sub)
        return sub

    def __missing__(self, cid):
        sub = self.lazy(cid)
        if sub is None:
            raise KeyError(cid)
        return sub

    def get(self, cid, default=None):
        sub = dict.get(self, cid)
        if sub is None:
            sub = self.lazy(cid)
        return default if sub is None else sub

    def __contains__(self, cid) -> bool:
        return dict.__contains__(self, cid) or (self.inventory is not None and cid in self.inventory.index)

    def copy(self) -> SubscriberMap:
        return SubscriberMap(self, self.inventory, self.build, self.cache)

    def eager(self) -> dict:
        """The subscribers built eagerly (every opted-out or suspended customer is among them)."""
        return dict(self)
