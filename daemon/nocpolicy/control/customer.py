"""The customer self-service page's listener, built from the options (app.py starts it).

Off unless ``--customer-listen`` is given. The page calls the daemon's commands as the
actor ``portal`` on the channel ``portal`` (what the audit shows for the customer's own
changes). The link key is the file shared with the member portal (docs/portal.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import NocpolicyError
from ..web.customer import CustomerPage
from ..web.customerlinks import load_key
from ..web.listener import Listener
from .commands import CommandRegistry

ACTOR = "portal"


def customer_listener(options, registry: CommandRegistry, tz=lambda: "Asia/Tokyo") -> Listener | None:
    if options.customer_listen is None:
        return None
    path = options.customer_link_key or str(Path(options.state_dir) / "customer-link.key")
    try:
        key = load_key(path, create=options.customer_link_key is None)
    except (OSError, ValueError) as exc:
        raise NocpolicyError(f"customer page: link key {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    context = None
    if options.customer_tls_cert or options.customer_tls_key:
        if not (options.customer_tls_cert and options.customer_tls_key):
            raise NocpolicyError("customer page: --customer-tls-cert and --customer-tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(options.customer_tls_cert, options.customer_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise NocpolicyError(f"customer page: TLS certificate: {exc}") from exc

    async def dispatch(name: str, args: dict) -> dict:
        return await registry.dispatch(name, args, actor=ACTOR, source="portal")

    page = CustomerPage(key, dispatch, tls=context is not None, tz=tz)
    host, port = options.customer_listen
    listener = Listener("customer page", host, port, page.app(), ssl=context)
    listener.page = page
    return listener
