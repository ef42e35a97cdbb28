"""SMTP delivery with aiosmtplib: one connection per batch, one transaction per notice.

aiosmtplib raises only when *every* recipient is refused; when some are accepted
it returns the refused ones in a dict. :func:`classify` turns both shapes (and
connection errors) into one per-recipient :class:`Outcome`, so a refused
customer address is a failure even when the NOC's archive copy was accepted.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import aiosmtplib

from ..errors import NocpolicyError
from ..policy.maintenance import Smtp


@dataclass(frozen=True)
class Outcome:
    ok: bool                       # the customer's recipient was accepted
    temporary: bool = False        # worth retrying (4xx, connection trouble)
    error: str = ""
    recipients: dict = field(default_factory=dict)   # address -> "250 ok" / "550 ..."


def classify(primary: str, recipients: list[str], refused: dict[str, tuple[int, str]],
             error: Exception | None = None) -> Outcome:
    """Pure: the outcome for ``primary`` given the refused recipients or a transport error."""
    if error is not None and not refused:
        code = getattr(error, "code", None)
        text = f"{code} {getattr(error, 'message', '')}".strip() if code else f"{type(error).__name__}: {error}"
        temporary = code is None or code < 500
        return Outcome(False, temporary, text, {r: text for r in recipients})
    answers = {r: (f"{refused[r][0]} {refused[r][1]}" if r in refused else "250 accepted") for r in recipients}
    if primary in refused:
        code, text = refused[primary]
        return Outcome(False, code < 500, f"{primary} refused: {code} {text}", answers)
    return Outcome(True, False, "", answers)


def read_password(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NocpolicyError(f"maintenance.smtp.password_file {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise NocpolicyError(f"maintenance.smtp.password_file {path} is readable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it")
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


class Session:
    def __init__(self, client: aiosmtplib.SMTP, sender: str):
        self._client, self._sender = client, sender

    async def send(self, msg: EmailMessage, recipients: list[str]) -> Outcome:
        primary = recipients[0]
        try:
            refused, _ = await self._client.send_message(msg, sender=self._sender, recipients=recipients)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return classify(primary, recipients, {e.recipient: (e.code, e.message) for e in exc.recipients})
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return classify(primary, recipients, {}, exc)
        return classify(primary, recipients, {r: (resp.code, resp.message) for r, resp in refused.items()})


class Mailer:
    """Opens SMTP sessions as configured in ``maintenance.smtp``."""

    def __init__(self, cfg: Smtp, password: str | None = None):
        self.cfg = cfg
        self.password = password

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        c = self.cfg
        client = aiosmtplib.SMTP(hostname=c.host, port=c.port, use_tls=c.tls,
                                 start_tls=True if c.starttls else False, timeout=c.timeout,
                                 cert_bundle=c.ca_file)
        try:
            await client.connect()
            if c.username:
                await client.login(c.username, self.password or "")
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise NocpolicyError(f"SMTP {c.host}:{c.port}: {exc}") from exc
        try:
            yield Session(client, c.sender)
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
