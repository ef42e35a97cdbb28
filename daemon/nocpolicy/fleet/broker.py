"""Where the broker is and how to log in: ``--mqtt`` URL, password file, TLS files.

Pure parsing plus one file check; nothing connects here. A password never comes
from the command line (``ps`` shows it): only from a file that group and others
cannot read.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from dataclasses import dataclass

from ..errors import NocpolicyError


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    username: str | None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def url(self) -> str:
        """The URL without secrets, for logs and status."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_url(url: str) -> tuple[str, int, str | None, bool]:
    """``mqtt://user@host:port`` -> (host, port, user, tls). Raises NocpolicyError."""
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise NocpolicyError(f"--mqtt {url!r}: {exc}") from None
    if u.scheme not in ("mqtt", "mqtts"):
        raise NocpolicyError(f"--mqtt {url!r}: the scheme must be mqtt:// or mqtts://")
    if u.password is not None:
        raise NocpolicyError("--mqtt: do not put the password in the URL (it shows in ps); "
                             "use --mqtt-password-file with a 0600 file")
    if not u.hostname:
        raise NocpolicyError(f"--mqtt {url!r}: no host (expected mqtt://user@host:1883)")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise NocpolicyError(f"--mqtt {url!r}: unexpected path or query after host:port")
    tls = u.scheme == "mqtts"
    return u.hostname, port or (8883 if tls else 1883), (urllib.parse.unquote(u.username)
                                                          if u.username else None), tls


def read_password_file(path: str) -> str:
    """The first line of ``path``; refuses a file that group or others may read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise NocpolicyError(f"--mqtt-password-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise NocpolicyError(f"--mqtt-password-file {path} is readable or writable by group/others "
                                 f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}")
        data = f.read(4096)
    try:
        line = data.decode().splitlines()[0].strip() if data.strip() else ""
    except UnicodeDecodeError:
        raise NocpolicyError(f"--mqtt-password-file {path}: not UTF-8 text") from None
    if not line:
        raise NocpolicyError(f"--mqtt-password-file {path} is empty")
    return line


def broker_config(options) -> BrokerConfig | None:
    """The broker from the daemon's options; None when --mqtt is not given."""
    if not options.mqtt:
        return None
    host, port, user, tls = parse_url(options.mqtt)
    password = read_password_file(options.mqtt_password_file) if options.mqtt_password_file else None
    if password is not None and not user:
        raise NocpolicyError("--mqtt-password-file needs a user name in the URL (mqtt://user@host:port)")
    for flag, value in (("--mqtt-ca", options.mqtt_ca), ("--mqtt-cert", options.mqtt_cert),
                        ("--mqtt-key", options.mqtt_key)):
        if value and not tls:
            raise NocpolicyError(f"{flag} is only used with mqtts://")
        if value and not os.path.isfile(value):
            raise NocpolicyError(f"{flag} {value}: no such file")
    if bool(options.mqtt_cert) != bool(options.mqtt_key):
        raise NocpolicyError("--mqtt-cert and --mqtt-key go together")
    return BrokerConfig(host, port, user, password, tls, options.mqtt_ca, options.mqtt_cert,
                        options.mqtt_key)
