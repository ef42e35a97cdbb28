"""Shared test helpers: free ports, polling with deadlines, a real nocpolicyd process."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def sh(*argv: str, check: bool = True) -> str:
    """Run a command (ip, nft, tc, ...); its stdout, or an AssertionError naming the command."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {p.stderr}")
    return p.stdout


@contextlib.contextmanager
def netns_with_veths(prefix: str, pairs: list[tuple[str, str]]):
    """A uniquely named network namespace holding veth pairs (the first name of each is set up).

    Yields the namespace name; the namespace (and its links) is deleted on exit.
    """
    name = f"{prefix}-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        for dev, peer in pairs:
            sh("ip", "-n", name, "link", "add", dev, "type", "veth", "peer", "name", peer)
            sh("ip", "-n", name, "link", "set", dev, "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


_HANDED_OUT: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_range(lo: int, hi: int) -> tuple[int, int]:
    """This pytest-xdist worker's own slice of [lo, hi) (the whole range without xdist): two
    workers of one run never pick the same port between the free check and the daemon's bind."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not count.isdigit() or int(count) < 2:
        return lo, hi
    i, n = int(worker[2:]), int(count)
    step = (hi - lo) // n
    return lo + i * step, lo + (i + 1) * step


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on host (DNS needs both).

    Chosen below the kernel's ephemeral range: a port the kernel handed out with
    ``bind(0)`` can be taken again by any outgoing connection (the daemon's own MQTT
    client, say) before the server under test binds it. Never the same port twice
    in one test process.
    """
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, hi = _worker_range(max(1024, _ephemeral_start() - 12000), _ephemeral_start())
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(lo, hi)
        if port in _HANDED_OUT:
            continue
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as t, socket.socket(fam, socket.SOCK_DGRAM) as u:
                t.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {lo}..{hi - 1}")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last error on timeout
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def udp_exchange(port: int, wire: bytes, host: str = "127.0.0.1", timeout: float = 3.0) -> bytes:
    """Send one raw datagram to host:port, return the first datagram that comes back."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (host, port))
        return s.recv(65535)


def copy_policies(dest: Path, src: Path = POLICIES) -> Path:
    target = dest / "policies"
    shutil.copytree(src, target)
    return target


def http_get(url: str, token: str | None = None, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class DaemonProcess:
    """A real ``nocpolicyd`` subprocess on free loopback ports, in a temporary work directory."""

    def __init__(self, workdir: Path, policies: Path | None = None, extra_args: list[str] | None = None,
                 env: dict | None = None):
        self.workdir = workdir
        self.policies = policies or copy_policies(workdir)
        self.state_dir = workdir / "state"
        self.dns_port = free_port()
        self.metrics_port = free_port()
        self.admin_port = free_port()
        self.extra_args = extra_args or []
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "nocpolicyd.log"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def args(self) -> list[str]:
        return [str(BIN / "nocpolicyd"), "--policies", str(self.policies), "--state-dir", str(self.state_dir),
                "--dns-listen", f"127.0.0.1:{self.dns_port}",
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                "--admin-listen", self.admin, *self.extra_args]

    def start(self, wait: bool = True) -> DaemonProcess:
        """Start the daemon; with ``wait``, until /readyz. A port another process took between
        ``free_port()`` and the daemon's bind (other test runs share this machine) is not the
        daemon's fault: the start is retried on fresh ports, at most twice."""
        for attempt in range(3):
            seen = len(self.log())
            self._log = open(self.log_path, "ab")
            env = dict(os.environ, **(self.env or {}))
            self.proc = subprocess.Popen(self.args(), cwd=self.workdir, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env)
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except AssertionError:
                if attempt == 2 or self.proc.poll() is None or "already in use" not in self.log()[seen:]:
                    raise
                self._log.close()
                self.dns_port, self.metrics_port, self.admin_port = free_port(), free_port(), free_port()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"nocpolicyd exited with {self.proc.returncode}:\n{self.log()}")
            return http_get(f"{self.metrics_url}/readyz", timeout=1)[0] == 200
        try:
            wait_for(ready, timeout, what="nocpolicyd /readyz")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def ctl(self, *args: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "nocpolicyctl"), "--admin", self.admin, "--state-dir", str(self.state_dir), *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.workdir)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def ctl_json(self, *args: str) -> dict:
        res = self.ctl("--json", *args)
        return json.loads(res.stdout)

    def metrics(self) -> str:
        return http_get(f"{self.metrics_url}/metrics")[1]

    def metric(self, name: str, labels: dict | None = None) -> float | None:
        """The value of one sample in the exposition text, or None."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted((labels or {}).items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            mname, _, lbl = series.partition("{")
            if mname != name:
                continue
            got = ",".join(sorted(p for p in lbl.rstrip("}").split(",") if p)) if lbl else ""
            if not labels or all(f'{k}="{v}"' in got.split(",") for k, v in (labels or {}).items()):
                if want == "" or labels:
                    return float(value)
        return None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nocpolicyd did not stop within {timeout}s\n{self.log()}") from None
        finally:
            self._close_log()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()
