"""A short GIL switch interval while a background thread does bulk work next to the event loop.

CPython hands the GIL from a busy thread to a waiting one only after the switch
interval (5 ms by default) has passed. The event loop thread releases the GIL at every
wait for I/O and takes it back on every wake-up: while a list reload parses a million
names in a thread, each wake-up could wait up to 5 ms, and answers queued behind a few
such waits took 50-75 ms (bench/README.md, "Reload stalls"). With 0.5 ms the loop
gets the GIL back ten times sooner; the cost is more hand-overs, only while the bulk
work runs. The interval is process-wide: uses nest (threads included), and the
interval in force before the outermost use comes back when it ends.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BULK_SWITCH_INTERVAL = 0.0005

_lock = threading.Lock()
_depth = 0
_saved = 0.0


@contextmanager
def short_switch(interval: float = BULK_SWITCH_INTERVAL) -> Iterator[None]:
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = sys.getswitchinterval()
            sys.setswitchinterval(min(interval, _saved))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sys.setswitchinterval(_saved)
