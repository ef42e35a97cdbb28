"""Commands: one registry behind the admin API, the CLI and MQTT.

A command is a name (``optout.set``), a handler and whether it changes state.
Arguments arrive as JSON and are read with the same field readers as policy
files, so a bad argument is reported by field name. Authorisation is checked
by the caller's transport (admin token, MQTT identity grants) through
:meth:`CommandRegistry.dispatch`'s ``allowed`` predicate.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import CommandError, Conflict, DomainError, Invalid, NocpolicyError, NotFound
from ..policy.fields import Obj, Problems
from ..policy.nodes import from_plain

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Invocation:
    actor: str              # "admin", "mqtt:<identity>", ...
    source: str             # admin-api | mqtt | internal
    request_id: str


class Args(Obj):
    """Command arguments; :meth:`check` raises CommandError listing every bad field."""

    def check(self) -> None:
        self.done()
        if self.problems:
            raise CommandError("; ".join(f"{p.path or '(body)'}: {p.reason}" for p in self.problems),
                               status=400, field=self.problems[0].path)


Handler = Callable[[Args, Invocation], Awaitable[dict]]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    summary: str
    mutating: bool = True


STATUS_OF = ((Invalid, 400), (NotFound, 404), (Conflict, 409))


def status_of(exc: DomainError) -> int:
    """The HTTP-like status the control layer answers a component's refusal with."""
    return next((status for kind, status in STATUS_OF if isinstance(exc, kind)), 409)


class CommandRegistry:
    def __init__(self):
        self._commands: dict[str, Command] = {}

    def register(self, cmd: Command) -> None:
        if cmd.name in self._commands:
            raise ValueError(f"command {cmd.name} registered twice")
        self._commands[cmd.name] = cmd

    def refuse(self, name: str, why: Callable[[], str]) -> None:
        """Answer ``name`` with a refusal (409, ``why()``) instead of running it: on a fleet agent,
        the state it changes belongs to the controller."""
        cmd = self._commands.get(name)
        if cmd is None:
            return

        async def refused(args: Args, inv: Invocation) -> dict:
            raise CommandError(why(), status=409)
        self._commands[name] = Command(cmd.name, refused, cmd.summary + " (refused here: fleet agent)",
                                       cmd.mutating)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def describe(self) -> list[dict]:
        return [{"name": c.name, "summary": c.summary, "mutating": c.mutating}
                for c in sorted(self._commands.values(), key=lambda c: c.name)]

    async def dispatch(self, name: str, payload, *, actor: str, source: str,
                       request_id: str | None = None,
                       allowed: Callable[[Command], bool] = lambda c: True) -> dict:
        cmd = self._commands.get(name)
        if cmd is None:
            raise CommandError(f"unknown command {name!r} (known: {', '.join(self.names())})", status=404)
        if not allowed(cmd):
            raise CommandError(f"{actor} is not allowed to run {name}", status=403)
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            raise CommandError("the request body must be a JSON object", status=400)
        inv = Invocation(actor=actor, source=source, request_id=request_id or uuid.uuid4().hex)
        args = Args(from_plain(payload, "", f"<{name}>"), Problems())
        try:
            result = await cmd.handler(args, inv)
        except CommandError:
            raise
        except DomainError as exc:
            raise CommandError(str(exc), status=status_of(exc), field=exc.field) from exc
        except NocpolicyError as exc:
            raise CommandError(str(exc), status=409) from exc
        if cmd.mutating:
            log.info("command %s by %s (%s) ok", name, actor, source)
        return result if result is not None else {}
