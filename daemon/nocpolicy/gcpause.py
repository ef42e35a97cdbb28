"""Pause the cyclic garbage collector while a bulk build runs.

Loading a million-row inventory or restoring a million live sessions creates millions of
container objects and no reference cycles worth collecting; the generational collector,
triggered again and again by the allocations, walks the growing heap each time and took
about half the CPU of such a load. Reference counting still frees everything as usual;
the collector is re-enabled when the outermost pause ends (pauses nest, and may run in
threads: ``asyncio.to_thread``), and only if it was enabled before.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


def freeze_start_up() -> int:
    """Move every object alive after start-up out of the collector's sight (``gc.freeze``).

    A full (generation 2) collection walks every tracked object: after start-up that is
    ~70,000 (functions, classes, module dicts, the first policy), and a collection took
    47-685 ms on the loop thread on a busy machine, a stall in answering DNS queries
    whenever the allocations of a list reload set one off (bench/README.md, "Reload
    stalls"). Frozen objects are never walked again; what is created later is collected
    as usual. The price: garbage cycles among the frozen objects (the first policy, once
    a reload replaces it) are never collected, a bounded once-only amount. Returns the
    number of objects frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
