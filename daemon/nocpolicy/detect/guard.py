"""The DNS guard as passive detection uses it: a small typed interface handed in from app.py.

Detection shares the guard's verdict (lists, classes, opt-out, allowlist) and its
detection log. Opt-outs themselves come from the subscribers area, pushed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import NocpolicyError

if TYPE_CHECKING:
    from ..dns.verdict import Verdict


class Guard(Protocol):
    """What passive detection needs of the DNS guard (dns/component.py DnsGuard)."""

    def judge(self, client: str, name: str) -> Verdict: ...

    def record_detection(self, v: Verdict, client: str, name: str | None = None,
                         source: str = "dns") -> None: ...

    def all_stats(self) -> list: ...     # per-process counters, ``.blocked[(list, class, action)]``


class GuardAdapter:
    """The guard once connected (``connect``, in app.py); detection refuses to start without."""

    def __init__(self, guard: Guard | None = None):
        self._guard = guard

    def connect(self, guard: Guard) -> None:
        self._guard = guard

    @property
    def guard(self) -> Guard:
        if self._guard is None:
            raise NocpolicyError("passive detection needs the DNS guard component (its lists, opt-outs "
                                 "and detection log), and it is not available")
        return self._guard

    def available(self) -> bool:
        return self._guard is not None

    def judge(self, client: str, name: str):
        return self.guard.judge(client, name)

    def record(self, verdict, client: str, name: str, source: str) -> None:
        self.guard.record_detection(verdict, client, name, source=source)

    def guard_blocked(self) -> dict[tuple[str, str], int]:
        """Blocks the guard answered itself, per (list, class): the ``source="guard"`` detections."""
        out: dict[tuple[str, str], int] = {}
        if self._guard is None:
            return out
        for s in self._guard.all_stats():
            for key, n in s.blocked.items():
                lst, cls = key[0], key[1]
                out[(lst, cls)] = out.get((lst, cls), 0) + n
        return out
