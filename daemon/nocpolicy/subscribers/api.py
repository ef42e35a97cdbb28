"""What consumers of subscriber state are handed (in app.py): small typed interfaces.

A consumer registers a :data:`Watcher` once; it is called with the whole new view and
what changed, synchronously, on the event loop, whenever the view changes (a policy
commit, a runtime decision). It must only swap references and mark caches stale: it
runs before the decision is acknowledged, so the very next query sees it. A
:data:`Replica` is another process (a DNS worker) that is sent every runtime decision
and applies it with the same code; the decision is acknowledged once every replica
has confirmed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from .model import Change, Decision
from .view import SubscriberView

Watcher = Callable[[SubscriberView, Change], None]
Replica = Callable[[Decision], Awaitable[bool]]


class SubscriberSource(Protocol):
    """The one owner of subscriber state, as its readers see it."""

    @property
    def view(self) -> SubscriberView: ...

    def watch(self, fn: Watcher) -> None:
        """Call ``fn(view, change)`` now with the current view and on every change."""

    def replicate_to(self, fn: Replica) -> None:
        """Send every runtime decision to ``fn`` too (awaited before it is acknowledged)."""

    async def decide(self, d: Decision) -> bool:
        """Apply a decision already persisted, here and in every replica (False: a replica was late)."""

    def apply(self, d: Decision) -> None:
        """Apply a decision made elsewhere (a worker process: the main process persisted it)."""
