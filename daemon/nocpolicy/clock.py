"""Clocks passed in from one place: the system clock, and a manual one for tests.

Every wall-clock or monotonic read in the daemon goes through this module:
components use the clock they are handed (``ctx.clock``); code without one
(module-level helpers, dataclass defaults, the store) calls ``utcnow()``,
``wall()`` or ``monotonic()`` here. The one exception is the hot DNS path
(dns/engine.py, dns/server.py, dns/tcp.py, dns/mmsg.py, dns/upstream.py), which reads
``time.perf_counter``/``time.monotonic`` (or the event loop's ``loop.time()``, the clock its timers run on) directly for per-query latency and
upstream hold-downs, where an extra call per packet would cost; those are
durations, never timestamps. tests/test_clock_reads.py checks both rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time


def utcnow() -> dt.datetime:
    """The system wall clock, aware UTC (for code that is not handed a clock)."""
    return dt.datetime.now(dt.UTC)


def wall() -> float:
    """The system wall clock in seconds since the epoch."""
    return time.time()


def monotonic() -> float:
    """Seconds on the system monotonic clock (durations, timeouts)."""
    return time.monotonic()


def monotonic_usec() -> int:
    """Microseconds on CLOCK_MONOTONIC (systemd's MONOTONIC_USEC)."""
    return time.monotonic_ns() // 1000


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to; sleepers wake when their time comes."""

    def __init__(self, start: dt.datetime):
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start
        self._mono = 0.0
        self._changed = asyncio.Event()

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds
        self._changed.set()
        self._changed = asyncio.Event()

    def set(self, when: dt.datetime) -> None:
        self.advance((when - self._now).total_seconds())

    async def sleep(self, seconds: float) -> None:
        deadline = self._mono + max(0.0, seconds)
        while self._mono < deadline:
            await self._changed.wait()


async def _sleep_until(clock, deadline: float) -> None:
    await clock.sleep(deadline - clock.monotonic())


async def nap(clock, event: asyncio.Event, seconds: float) -> None:
    """Sleep on ``clock`` for ``seconds`` or until ``event`` is set, whichever comes first; clears it."""
    if event.is_set():
        event.clear()
        return
    # The deadline is fixed now, not when the sleeper first runs: a clock that moves in
    # between (a test's ManualClock.advance) must not push the wake-up further away.
    deadline = clock.monotonic() + seconds
    sleeper = asyncio.ensure_future(_sleep_until(clock, deadline))
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waiter):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(sleeper, waiter, return_exceptions=True)
        event.clear()
