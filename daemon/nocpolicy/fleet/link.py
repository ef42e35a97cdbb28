"""One broker connection kept up with exponential backoff (the only module using aiomqtt).

The owner supplies the subscriptions, an ``on_connected`` coroutine (publish the
online status, republish plans) and an ``on_message`` callback that must return
quickly (slow work goes to the owner's own tasks). aiomqtt errors stay here:
the owner sees ``connected``, ``last_error`` and ``publish() -> bool``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from .broker import BrokerConfig

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 30.0
PUBLISH_TIMEOUT = 10.0


class Link:
    def __init__(self, cfg: BrokerConfig, identifier: str, *, subscriptions: list[str],
                 on_connected: Callable[[], Awaitable[None]], on_message: Callable[[aiomqtt.Message], None],
                 will: tuple[str, bytes] | None = None, keepalive: int = 30,
                 backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX):
        self.cfg, self.identifier = cfg, identifier
        self.subscriptions = subscriptions
        self._on_connected, self._on_message = on_connected, on_message
        self.will, self.keepalive = will, keepalive
        self.backoff_min, self.backoff_max = backoff_min, backoff_max
        self.client: aiomqtt.Client | None = None
        self.connected = asyncio.Event()
        self.connects = 0          # successful connections
        self.failures = 0          # failed attempts and lost connections
        self.last_error = ""
        self._closing = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        cfg = self.cfg
        tls = aiomqtt.TLSParameters(ca_certs=cfg.ca, certfile=cfg.cert, keyfile=cfg.key) if cfg.tls else None
        will = aiomqtt.Will(self.will[0], self.will[1], qos=1, retain=True) if self.will else None
        return aiomqtt.Client(cfg.host, cfg.port, username=cfg.username, password=cfg.password,
                              identifier=self.identifier, will=will, clean_session=True,
                              keepalive=self.keepalive, timeout=PUBLISH_TIMEOUT, tls_params=tls,
                              max_inflight_messages=1000, max_queued_incoming_messages=100000)

    async def run(self) -> None:
        delay = self.backoff_min
        while True:
            try:
                async with self._client() as client:
                    for topic in self.subscriptions:
                        await client.subscribe(topic, qos=1)
                    self.client = client
                    self.connects += 1
                    self.connected.set()
                    delay = self.backoff_min
                    log.info("mqtt: connected to %s as %s", self.cfg.url, self.identifier)
                    try:
                        await self._on_connected()
                    except Exception:
                        log.exception("mqtt: after-connect work failed")
                    if await self._serve(client):
                        return      # closing: leaving the context sends DISCONNECT (no last will)
            except aiomqtt.MqttError as exc:
                self.failures += 1
                self.last_error = describe(exc)
                log.warning("mqtt: %s: %s; retrying in %.1fs", self.cfg.url, self.last_error, delay)
            finally:
                self.client = None
                self.connected.clear()
            if self._closing.is_set():
                return
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _serve(self, client: aiomqtt.Client) -> bool:
        """Hand messages to the owner until the connection drops (raises) or close() (True)."""
        async def pump():
            async for msg in client.messages:
                try:
                    self._on_message(msg)
                except Exception:   # a bad message never takes the link down
                    log.exception("mqtt: handling a message on %s failed", msg.topic)
        messages = asyncio.ensure_future(pump())
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({messages, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (messages, closing):
                t.cancel()
        if messages.done() and not messages.cancelled() and messages.exception() is not None:
            raise messages.exception()
        return self._closing.is_set()

    def close(self) -> None:
        """Leave cleanly: the run loop disconnects (DISCONNECT, so the broker drops the last will)."""
        self._closing.set()

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        """Publish if connected; False (never an exception) when the broker is not reachable."""
        client = self.client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
            return True
        except aiomqtt.MqttError as exc:
            self.last_error = describe(exc)
            return False


def describe(exc: Exception) -> str:
    """An operator-readable reason for an aiomqtt error."""
    text = str(exc)
    if "Not authorized" in text or "Bad user name or password" in text or "code:5" in text:
        return f"broker refused the login ({text}): check the user name and --mqtt-password-file"
    if "Connection refused" in text or "Errno 111" in text:
        return f"broker not reachable ({text})"
    return text or type(exc).__name__
