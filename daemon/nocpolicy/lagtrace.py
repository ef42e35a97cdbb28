"""Event-loop lag trace, for finding what holds the loop up (a diagnostic, off by default).

``NOCPOLICY_LAG_TRACE=/path/file`` in nocpolicyd's environment writes lines stamped
in milliseconds of the system monotonic clock (clock.monotonic):

* ``lag``   -- a 2 ms timer on the event loop that fired more than 10 ms late (how late);
* ``gc``    -- a cyclic garbage collection over 2 ms (generation, thread, duration);
* ``mark``  -- phases of slow work (a list reload: fetch, decode, parse, swap, free),
  from whichever thread runs them, via :func:`mark`.

Reading it: a ``lag`` whose window (stamp minus lag .. stamp) holds a ``gc`` or sits
between two marks of one phase names the culprit; a lag with nothing in its window
is the machine descheduling the process (compare with another process's probes).
Unset (the default), :func:`mark` is one global read and nothing else runs.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

from .clock import monotonic

_out = None                   # the open trace file, or None when tracing is off
_lock = threading.Lock()
_gc_start: dict[int, float] = {}
_lines = 0
MAX_LINES = 200_000           # bounded: a forgotten trace stops growing


def enabled() -> bool:
    return _out is not None


def _write(kind: str, text: str) -> None:
    global _lines
    out = _out
    if out is None or _lines >= MAX_LINES:
        return
    line = f"{monotonic() * 1000:.1f} {kind} {threading.current_thread().name} {text}\n"
    with _lock:
        _lines += 1
        out.write(line)


def mark(what: str) -> None:
    """A phase boundary of slow work (no-op unless tracing)."""
    if _out is not None:
        _write("mark", what)


def census(label: str) -> None:
    """The objects the cyclic collector tracks, by generation and commonest type (slow: a trace only)."""
    if _out is None:
        return
    from collections import Counter
    gens = [len(gc.get_objects(g)) for g in range(3)]
    objs = gc.get_objects()
    top = Counter(type(o).__name__ for o in objs).most_common(6)
    big = []
    for o in objs:
        try:
            n = len(o) if isinstance(o, (dict, list, set, frozenset, tuple)) else 0
        except Exception:      # noqa: BLE001 (a census must not fail)
            n = 0
        if n > 50_000:
            big.append((type(o).__name__, n))
    del objs
    _write("census", f"{label}: gen0-2 {gens} frozen {gc.get_freeze_count()} top {top} big {big}")


def _gc_callback(phase: str, info: dict) -> None:
    tid = threading.get_ident()
    if phase == "start":
        _gc_start[tid] = monotonic()
        return
    t0 = _gc_start.pop(tid, None)
    if t0 is not None:
        ms = (monotonic() - t0) * 1000
        if ms > 2:
            _write("gc", f"gen={info.get('generation')} {ms:.1f}ms collected={info.get('collected')}")


_beat = [0.0]                 # the last time the lag timer ran (monotonic)


async def _lag_loop(period: float = 0.002, report: float = 0.010) -> None:
    while True:
        t0 = _beat[0] = monotonic()
        await asyncio.sleep(period)
        late = monotonic() - t0 - period
        if late > report:
            _write("lag", f"{late * 1000:.1f}ms")


def _watchdog(main_id: int, stall: float = 0.030) -> None:
    """A thread: when the lag timer has not run for ``stall`` s, write where the loop thread is
    (once per stall; the stack is taken when this thread next gets the GIL)."""
    import sys
    import traceback
    seen = 0.0
    while True:
        time.sleep(0.005)
        beat = _beat[0]
        if beat and beat != seen and monotonic() - beat > stall:
            seen = beat
            frame = sys._current_frames().get(main_id)
            stack = traceback.extract_stack(frame)[-6:] if frame is not None else []
            where = " < ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(stack))
            _write("stall", f"{(monotonic() - beat) * 1000:.0f}ms loop thread at {where}")


def start() -> asyncio.Task | None:
    """Open the trace named by NOCPOLICY_LAG_TRACE (if any) and start the lag timer."""
    global _out
    path = os.environ.get("NOCPOLICY_LAG_TRACE")
    if not path or _out is not None:
        return None
    _out = open(path, "a", buffering=1, encoding="utf-8")   # noqa: SIM115 (lives with the process)
    gc.callbacks.append(_gc_callback)
    _write("mark", "trace started")
    census("start")
    threading.Thread(target=_watchdog, args=(threading.get_ident(),), name="lag-watchdog", daemon=True).start()
    return asyncio.get_running_loop().create_task(_lag_loop(), name="lag-trace")
