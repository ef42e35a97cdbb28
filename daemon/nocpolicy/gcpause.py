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


def settle() -> None:
    """After start-up or a reload: collect once, then move every surviving object to the
    permanent generation (``gc.freeze``), so that the collections a flood's allocations trigger
    walk only what was created since, not the policy, the customers and the modules (a full
    collection of those held the DNS guard's loop 47-58 ms under a flood, issue 14). Unfreezes
    first: what the previous settle froze and is garbage now (the replaced policy) is collected,
    not kept for ever. Not while a bulk build has the collector paused (the next settle does it)."""
    with _lock:
        if _depth:
            return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
