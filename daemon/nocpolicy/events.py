"""In-process event bus: components publish, the MQTT bridge (and tests) subscribe.

Queues are bounded; an event that does not fit is dropped and counted, so a slow
or absent consumer never blocks DNS answers or enforcement.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .clock import utcnow


@dataclass(frozen=True)
class Event:
    kind: str            # reload, emergency, window, notice, detections, optout, ...
    payload: dict
    ts: str = field(default_factory=lambda: utcnow().isoformat())


class EventBus:
    def __init__(self):
        self._queues: list[asyncio.Queue] = []
        self.dropped = 0
        self.published = 0

    def subscribe(self, maxsize: int = 10000) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self._queues.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        if q in self._queues:
            self._queues.remove(q)

    def publish(self, kind: str, payload: dict) -> None:
        ev = Event(kind, payload)
        self.published += 1
        for q in self._queues:
            try:
                q.put_nowait(ev)
            except asyncio.QueueFull:
                self.dropped += 1
