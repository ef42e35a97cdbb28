"""The one lifecycle every component shares, and the context passed to it.

``prepare(policy, change)`` does the heavy work for a new policy (build indexes,
render rules) off the live state and returns a ``commit`` callable that swaps it
in; it raises to refuse the policy, so a reload is all-or-nothing across
components (those already prepared are told ``abandon()``). ``start()`` runs once after the first commit, ``stop()`` once at the
end (in reverse order of the component list).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .clock import utcnow
from .tasks import TaskSet

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .clock import SystemClock
    from .control.commands import Command
    from .events import EventBus
    from .options import Options
    from .policy.diff import PolicyChange
    from .policy.model import Policy
    from .store import Store

Commit = Callable[[], None]
TASK_FAILED = "task "      # prefix of the detail of a failure reported by a background task


@dataclass
class Context:
    """Side effects, passed in from one place (app.py)."""

    options: Options
    store: Store
    clock: SystemClock
    events: EventBus
    registry: CollectorRegistry
    policy: Callable[[], Policy]          # the policy in force now
    secrets: dict[str, bytes] = field(default_factory=dict)   # e.g. pseudonym key
    commands: Any = None                                      # the CommandRegistry (MQTT dispatches through it)
    components: dict[str, Any] = field(default_factory=dict)  # name -> component, for cross-component calls
    # the one owner of subscriber state, a subscribers.api.SubscriberSource (set in app.py);
    # typed loosely because component sits below subscribers in the layers
    subscribers: Any = None


class Component:
    name = "component"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.tasks = TaskSet(self.name, on_failure=self._task_failed, on_recovery=self._task_recovered)
        self.state = "new"            # new, running, failed, stopped, disabled
        self.detail = ""
        self.since = utcnow()

    # -- lifecycle ---------------------------------------------------------------

    async def prepare(self, policy: Policy, change: PolicyChange) -> Commit | None:
        return None

    async def abandon(self) -> None:
        """The reload was refused after this component's ``prepare`` succeeded (another component
        refused it): release what ``prepare`` acquired for the commit that will not come (a bound
        socket, say). Most components acquire nothing there."""

    async def start(self) -> None:
        self.set_state("running")

    async def stop(self) -> None:
        await self.tasks.close()
        self.set_state("stopped")

    async def dry_run(self, policy: Policy, change: PolicyChange) -> str | None:
        """What applying ``policy`` would change (for ``reload --dry-run``); None if nothing to say."""
        return None

    # -- wiring ------------------------------------------------------------------

    def commands(self) -> list[Command]:
        return []

    def collectors(self) -> list:
        return []

    def status(self) -> dict:
        return {"state": self.state, "detail": self.detail, "since": self.since.isoformat()}

    # -- helpers -----------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self.state in ("running", "disabled")

    def set_state(self, state: str, detail: str = "") -> None:
        if state != self.state or detail != self.detail:
            self.since = utcnow()
        self.state, self.detail = state, detail

    def _task_failed(self, task: str, exc: BaseException) -> None:
        self.set_state("failed", f"{TASK_FAILED}{task}: {type(exc).__name__}: {exc}")

    def _task_recovered(self) -> None:
        """Every failing task runs again: a failure that came from a task is over."""
        if self.state == "failed" and self.detail.startswith(TASK_FAILED):
            self.set_state("running")
