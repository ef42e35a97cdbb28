"""The admin API bearer token: generated on first start, kept 0600 in the state directory."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "admin.token"


def token_path(state_dir: str | os.PathLike) -> Path:
    return Path(state_dir) / TOKEN_FILE


def ensure_token(state_dir: str | os.PathLike) -> str:
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.chmod(path, 0o600)
        tok = path.read_text().strip()
        if tok:
            return tok
    tok = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok


def read_token(state_dir: str | os.PathLike) -> str:
    return token_path(state_dir).read_text().strip()


def token_matches(expected: str, header: str | None) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(expected.encode(), header[7:].strip().encode())
