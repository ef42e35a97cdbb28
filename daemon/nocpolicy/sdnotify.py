"""systemd notify protocol (READY, RELOADING, STOPPING, WATCHDOG) without a dependency."""

from __future__ import annotations

import os
import socket

from .clock import monotonic_usec


def notify(*states: str) -> bool:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    msg = "\n".join(states)
    if "RELOADING=1" in states:
        msg += f"\nMONOTONIC_USEC={monotonic_usec()}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)      # called on the event loop: a reader that stopped reading
            s.sendto(msg.encode(), addr)   # (a full queue) costs a dropped message, never a stall
        return True
    except OSError:                   # BlockingIOError included
        return False


def watchdog_interval() -> float | None:
    """Half the WatchdogSec systemd set for us, or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
