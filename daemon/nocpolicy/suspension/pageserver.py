"""The notice page's listener (web/notice.py), which a reload may move: the new address is bound
first (in the component's ``prepare``: a failure refuses the reload naming the field, and the
page stays where it is), the commit swaps it in and closes the old one; a reload refused by
another component lets the staged address go again (``abandon``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..errors import NocpolicyError
from ..web.listener import Listener
from ..web.notice import notice_app

log = logging.getLogger(__name__)


class PageServer:
    """``lookup(client address)`` is the page data for that client (suspension/page.py)."""

    def __init__(self, lookup: Callable[[str], dict | None]):
        self.lookup = lookup
        self.current: Listener | None = None        # the page being served
        self.staged: Listener | None = None         # bound for a reload not yet committed
        self.listening: tuple[str, int] | None = None   # the configured address ``current`` serves
        self.pending: tuple[str, int] | None = None     # the configured address ``staged`` serves

    def where(self) -> str | None:
        return _where(self.current) if self.current is not None else None

    async def start(self, conf) -> None:
        if conf.listen is not None:
            self.current = await self._bind(conf)
        self.listening = conf.listen

    async def stage(self, conf) -> bool:
        """Bind ``conf.listen`` if it differs from the address served; False: nothing to change."""
        if conf.listen == self.listening:
            return False
        await self.abandon()
        self.staged = await self._bind(conf) if conf.listen is not None else None
        self.pending = conf.listen
        return True

    def commit(self, spawn) -> None:
        """Serve the staged listener; the old one is closed by ``spawn(name, coroutine)``."""
        old, self.current, self.staged, self.listening = self.current, self.staged, None, self.pending
        if old is not None:
            spawn("notice-page-close", old.stop())
        log.info("notice page %s", f"moved to {self.where()}" if self.current else "closed (listen removed)")

    async def abandon(self) -> None:
        staged, self.staged = self.staged, None
        if staged is not None:
            await staged.stop()

    async def stop(self) -> None:
        await self.abandon()
        if self.current is not None:
            await self.current.stop()
            self.current = None

    async def _bind(self, conf) -> Listener:
        host, port = conf.listen
        listener = Listener("notice-page", host, port, notice_app(self.lookup))
        try:
            await listener.start()
        except OSError as exc:
            await listener.stop()
            keep = f"; the notice page stays on {self.where()}" if self.current is not None else ""
            raise NocpolicyError(f"{conf.listen_loc}: suspension.notice_page.listen: cannot listen on "
                                 f"{_fmt(host)}:{port}: {exc.strerror or exc}{keep}") from exc
        return listener


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _where(listener: Listener) -> str:
    return f"{_fmt(listener.host)}:{listener.port}"
