"""Shared pieces of the session tests: a policy with RADIUS accounting, radclient runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from helpers import DaemonProcess, copy_policies, free_port

SECRET = "s3cret-bng1"


def sessions_policy(workdir: Path, radius_port: int, extra: str = "", *, secret: str = SECRET,
                    kea: str = "", grace: str = "60s") -> Path:
    pol = copy_policies(workdir)
    secret_file = pol / "bng1.secret"
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    (pol / "sessions.yaml").write_text(f"""
sessions:
  radius:
    listen: 127.0.0.1:{radius_port}
    clients:
      - {{id: bng1, address: 127.0.0.0/8, secret_file: bng1.secret}}
    customer_from: {{attribute: User-Name, regex: '^(?P<id>[^@]+)@'}}
    interim_interval: 300
    stale_grace: {grace}
  nat_pools:
    - {{id: cgn1, public: 198.51.100.0/30, internal: 100.64.0.0/24, ports: 1024-65535, block_size: 1008}}
{kea}{extra}""")
    return pol


def start_daemon(workdir: Path, kea: str = "", extra: str = "", grace: str = "60s") -> tuple[DaemonProcess, int]:
    port = free_port(kind=2)   # SOCK_DGRAM
    pol = sessions_policy(workdir, port, extra, kea=kea, grace=grace)
    d = DaemonProcess(workdir, policies=pol).start()
    return d, port


def radclient(port: int, attrs: str, *, secret: str = SECRET, retries: int = 3, timeout: float = 3.0,
              count: int = 1) -> subprocess.CompletedProcess:
    """Send one Accounting-Request with the real FreeRADIUS radclient; returns the run."""
    return subprocess.run(["radclient", "-x", "-r", str(retries), "-t", str(timeout), "-c", str(count),
                           f"127.0.0.1:{port}", "acct", secret],
                          input=attrs, capture_output=True, text=True, timeout=60)


def acct(status: str, sid: str, user: str = "c1001@isp.example", ip: str | None = "203.0.113.7",
         **more) -> str:
    lines = [f"Acct-Status-Type = {status}", f'Acct-Session-Id = "{sid}"', f'User-Name = "{user}"',
             'NAS-Identifier = "bng1.tokyo"', 'Calling-Station-Id = "02:00:00:00:00:01"']
    if ip:
        lines.append(f"Framed-IP-Address = {ip}")
    lines += [f"{k.replace('_', '-')} = {v}" for k, v in more.items()]
    return "\n".join(lines) + "\n"
