"""The admin API client nocpolicyctl uses (stdlib only)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

from ..control.token import token_path
from ..policy.fields import parse_hostport


class Unreachable(Exception):
    pass


class Refused(Exception):
    def __init__(self, status: int, body: dict):
        self.status, self.body = status, body
        super().__init__(body.get("error", f"HTTP {status}"))


class AdminClient:
    def __init__(self, admin: str, state_dir: str, timeout: float = 30.0):
        self.admin, self.state_dir, self.timeout = admin, state_dir, timeout

    def _base(self) -> str:
        try:
            host, port = parse_hostport(self.admin)
        except ValueError as exc:
            raise Unreachable(f"--admin: {exc}") from None
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def _token(self) -> str:
        path = token_path(self.state_dir)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise Unreachable(f"cannot read the admin token {path}: {exc.strerror} "
                              "(is --state-dir the daemon's state directory? are you allowed to read it?)") from None

    def call(self, command: str, payload: dict | None = None) -> dict:
        """Run a command; returns the JSON answer or raises Refused / Unreachable."""
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(f"{self._base()}/v1/cmd/{command}", data=data, method="POST",
                                     headers={"Authorization": f"Bearer {self._token()}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read() or b"{}")
            except ValueError:
                body = {"error": f"HTTP {exc.code}"}
            raise Refused(exc.code, body) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach nocpolicyd at {self.admin}: {reason}") from None


def run(client: AdminClient, args, command: str, payload: dict | None, render) -> int:
    """Call, then print JSON (--json) or the human rendering; map refusals to exit 1."""
    try:
        out = client.call(command, payload)
    except Refused as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.body, ensure_ascii=False, indent=1))
        else:
            print(f"nocpolicyctl: {command}: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    return render(out) or 0
