"""The dnstap listener: a unix socket speaking bidirectional Frame Streams.

Each decoded CLIENT_QUERY / CLIENT_RESPONSE is handed to ``sink`` as a
:class:`~.dnstap.TapMessage` (or as what ``convert`` makes of it); other message
types (resolver-to-authority traffic) are counted and ignored. Frames are decoded,
and converted, in one parser thread, off the event loop: the loop only moves bytes. A connection that breaks the protocol is
closed and counted; the listener keeps serving the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import NocpolicyError
from . import dnstap
from .framestream import FrameError, Receiver
from .protobuf import DecodeError

log = logging.getLogger(__name__)


class TapServer:
    def __init__(self, path: str, sink: Callable, *, mode: int = 0o660,
                 convert: Callable[[dnstap.TapMessage], object | None] | None = None):
        self.path = path
        self.sink = sink
        self.convert = convert
        self._pool: ThreadPoolExecutor | None = None
        self.mode = mode
        self.server: asyncio.base_events.Server | None = None
        self.connections = 0          # currently connected senders
        self.accepted = 0
        self.frames = 0
        self.ignored = 0              # well-formed but not client traffic
        self.errors = 0               # malformed frames or protocol violations
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        try:
            _clear_socket_path(self.path)
            self.server = await asyncio.start_unix_server(self._serve, path=self.path)
            os.chmod(self.path, self.mode)
        except OSError as exc:
            raise NocpolicyError(f"cannot listen for dnstap on {self.path}: {exc.strerror or exc}") from exc
        log.info("dnstap: listening on %s", self.path)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            self.server = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        _remove(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.accepted += 1
        self._writers.add(writer)
        rx = Receiver(dnstap.CONTENT_TYPE)
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out = rx.feed(chunk)
                if out.reply:
                    writer.write(out.reply)
                    await writer.drain()
                if out.frames:
                    for item in await self._decode(out.frames):
                        self.sink(item)
                if out.finished:
                    break
        except FrameError as exc:
            self.errors += 1
            log.warning("dnstap: closing a sender that broke Frame Streams: %s", exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _decode(self, frames: list[bytes]) -> list:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dnstap")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._decode_all, frames)

    def _decode_all(self, frames: list[bytes]) -> list:
        """Runs in the parser thread (one: the counters have one writer)."""
        out = []
        for frame in frames:
            item = self._frame(frame)
            if item is not None:
                out.append(item)
        return out

    def _frame(self, frame: bytes):
        self.frames += 1
        try:
            msg = dnstap.decode(frame)
        except DecodeError as exc:
            self.errors += 1
            log.debug("dnstap: undecodable frame: %s", exc)
            return None
        if msg is None or msg.type not in (dnstap.CLIENT_QUERY, dnstap.CLIENT_RESPONSE):
            self.ignored += 1
            return None
        if self.convert is None:
            return msg
        item = self.convert(msg)
        if item is None:
            self.errors += 1
        return item


def _clear_socket_path(path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise NocpolicyError(f"detect.dnstap.socket {path} exists and is not a socket: refusing to replace it")
        p.unlink()


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()
