"""The event loop every nocpolicy process runs on (the daemon and its DNS workers)."""

from __future__ import annotations


def loop_factory():
    """uvloop when installed (faster DNS path), else the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
