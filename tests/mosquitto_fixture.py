"""A real mosquitto broker for tests and benches: free loopback port, password file, ACL.

``Mosquitto(workdir, users={"name": "password"}, acl=ACL_TEXT).start()``;
``stop()`` / ``start()`` again reuse the same port and persistence file, so a
test can restart the broker under a running daemon. The ACL that ships in
docs/mqtt.md is :func:`fleet_acl`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def fleet_acl(controller: str, operators=(), readers=()) -> str:
    """The broker ACL documented in docs/mqtt.md.

    Agents log in with their node name as user name; the controller with its own
    node name; operators/feeds/portals with the identity the policy grants verbs to.
    """
    lines = [
        "# every client: commands only under its own user name, replies only its own",
        "pattern write nocpolicy/v1/cmd/%u/+",
        "pattern read nocpolicy/v1/reply/%u/#",
        "# every node (agents, controller): its own status, plan and ack",
        "pattern readwrite nocpolicy/v1/nodes/%u/status",
        "pattern read nocpolicy/v1/nodes/%u/plan",
        "pattern write nocpolicy/v1/nodes/%u/ack",
        "pattern write nocpolicy/v1/events/#",
        "",
        f"user {controller}",
        "topic read nocpolicy/v1/cmd/#",
        "topic write nocpolicy/v1/reply/#",
        "topic write nocpolicy/v1/nodes/+/plan",
        "topic read nocpolicy/v1/nodes/+/status",
        "topic read nocpolicy/v1/nodes/+/ack",
        "topic write nocpolicy/v1/events/#",
    ]
    for r in readers:
        lines += ["", f"user {r}", "topic read nocpolicy/v1/#"]
    return "\n".join(lines) + "\n"


class Mosquitto:
    def __init__(self, workdir: Path, users: dict[str, str], acl: str, port: int | None = None):
        self.dir = Path(workdir) / f"mosquitto-{os.getpid()}-{id(self) & 0xffff:x}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = dict(users)
        self.proc: subprocess.Popen | None = None
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self._write(acl)

    def _write(self, acl: str) -> None:
        # mosquitto_passwd -U hashes a plain user:password file in one call (fast for 1,000 users)
        self.passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
        os.chmod(self.passwd, 0o600)
        subprocess.run([MOSQUITTO_PASSWD, "-U", str(self.passwd)], check=True, capture_output=True)
        self.acl.write_text(acl)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"   # as root, do not switch to 'mosquitto'

            "allow_anonymous false\n"
            f"password_file {self.passwd}\n"
            f"acl_file {self.acl}\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            f"log_dest file {self.log_path}\n")

    def add_user(self, user: str, password: str) -> None:
        """mosquitto_passwd -b (the documented way to add one identity)."""
        self.users[user] = password
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(self.passwd), user, password], check=True,
                       capture_output=True)

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited {self.proc.returncode}: {self.log()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_for(listening, timeout, what=f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def password_file(self, user: str) -> Path:
        """A 0600 file with ``user``'s password, for --mqtt-password-file."""
        path = self.dir / f"{user}.password"
        path.write_text(self.users[user] + "\n")
        os.chmod(path, 0o600)
        return path

    def daemon_args(self, user: str) -> list[str]:
        return ["--mqtt", f"mqtt://{user}@127.0.0.1:{self.port}",
                "--mqtt-password-file", str(self.password_file(user))]

    def pub(self, user: str, topic: str, payload: str, *, retain: bool = False) -> subprocess.CompletedProcess:
        """mosquitto_pub as ``user`` (the real client operators use)."""
        cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-u", user, "-P", self.users[user],
               "-q", "1", "-t", topic, "-m", payload] + (["-r"] if retain else [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10)

    def sub(self, user: str, topic: str, *, count: int = 1, timeout: float = 10.0) -> subprocess.Popen:
        """mosquitto_sub as ``user``, printing "topic payload" lines; caller reads .stdout."""
        cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port), "-u", user, "-P", self.users[user],
               "-q", "1", "-v", "-t", topic, "-C", str(count), "-W", str(int(timeout))]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def broker_factory(tmp_path):
    started: list[Mosquitto] = []

    def make(users: dict[str, str], acl: str) -> Mosquitto:
        m = Mosquitto(tmp_path, users, acl)
        started.append(m)
        return m.start()

    yield make
    for m in started:
        m.stop()
