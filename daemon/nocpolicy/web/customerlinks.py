"""Signed, expiring links from the ISP's member portal to the customer page (pure).

The portal, which has already authenticated the customer, sends them to
``/login?customer=<id>&expires=<unix seconds>&sig=<hex>`` where ``sig`` is
HMAC-SHA256 over ``"nocpolicy-customer-link-v1\\n<customer>\\n<expires>"`` with the key
both share (a file, 0600). A link is refused when the signature does not match, when it
has expired, or when it claims to be valid for longer than ``MAX_LIFETIME`` (a leaked
link is useful for minutes, not days). docs/portal.md tells the portal team how to make one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

PREFIX = b"nocpolicy-customer-link-v1\n"
MAX_LIFETIME = 3600          # seconds a link may be valid for, at most
KEY_MIN = 32
CUSTOMER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class LinkRefused(Exception):
    def __init__(self, reason: str, why: str):
        super().__init__(why)
        self.reason = reason          # "invalid" | "expired"


def sign(key: bytes, customer: str, expires: int) -> str:
    msg = PREFIX + customer.encode() + b"\n" + str(int(expires)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def link_query(key: bytes, customer: str, expires: int) -> str:
    """The query string of a link (what the portal builds; tests use it too)."""
    from urllib.parse import urlencode
    return urlencode({"customer": customer, "expires": str(int(expires)), "sig": sign(key, customer, expires)})


def verify(key: bytes, customer: str | None, expires: str | None, sig: str | None, now: float) -> str:
    """The customer id of a good link; :class:`LinkRefused` otherwise (pure)."""
    if not customer or not expires or not sig or not CUSTOMER_RE.match(customer) \
            or not (expires.isascii() and expires.isdigit()) or len(expires) > 12 or len(sig) != 64:
        raise LinkRefused("invalid", "the link is incomplete or malformed")
    if not hmac.compare_digest(sign(key, customer, int(expires)), sig.lower()):
        raise LinkRefused("invalid", "the link's signature does not match")
    if int(expires) <= now:
        raise LinkRefused("expired", "the link has expired")
    if int(expires) > now + MAX_LIFETIME:
        raise LinkRefused("invalid", f"the link claims to be valid for more than {MAX_LIFETIME} s")
    return customer


def load_key(path: str | os.PathLike, *, create: bool) -> bytes:
    """The shared key: the file's bytes (at least 32; it is made 0600). With ``create``, a
    missing file is created with 32 random bytes, hex-encoded (the portal reads the same file)."""
    p = Path(path)
    if not p.exists() and create:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    os.chmod(p, 0o600)
    key = p.read_bytes().strip()
    if len(key) < KEY_MIN:
        raise ValueError(f"{p}: the link key must be at least {KEY_MIN} bytes")
    return key
