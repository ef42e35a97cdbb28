"""A real mosquitto broker for tests and benches: free loopback port, password file, ACL.

``Mosquitto(workdir, users={"name": "password"}, acl=ACL_TEXT).start()``;
``stop()`` / ``start()`` again reuse the same port and persistence file, so a
test can restart the broker under a running daemon. The ACL that ships in
docs/mqtt.md is :func:`fleet_acl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import free_port, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def fleet_acl(controller: str, operators=(), readers=(), agents=()) -> str:
    """The broker ACL documented in docs/mqtt.md.

    Agents log in with their node name as user name; the controller with its own
    node name; operators/feeds/portals with the identity the policy grants verbs to.
    Each of ``agents`` may read the fleet-wide state (``nocpolicy/v1/fleet/#``).
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
        "# fleet state: its own streams in, its own ack out",
        "pattern read nocpolicy/v1/nodes/%u/state/+/snap",
        "pattern read nocpolicy/v1/nodes/%u/state/+/delta/+",
        "pattern read nocpolicy/v1/nodes/%u/state/+/part/+",
        "pattern write nocpolicy/v1/nodes/%u/state/ack",
        "pattern write nocpolicy/v1/nodes/%u/up/detections",
        "pattern write nocpolicy/v1/nodes/%u/up/sessions",
        "",
        f"user {controller}",
        "topic read nocpolicy/v1/cmd/#",
        "topic write nocpolicy/v1/reply/#",
        "topic write nocpolicy/v1/nodes/+/plan",
        "topic read nocpolicy/v1/nodes/+/status",
        "topic read nocpolicy/v1/nodes/+/ack",
        "topic write nocpolicy/v1/events/#",
        "topic write nocpolicy/v1/fleet/#",
        "topic write nocpolicy/v1/nodes/+/state/#",
        "topic read nocpolicy/v1/nodes/+/state/ack",
        "topic read nocpolicy/v1/nodes/+/up/#",
    ]
    for a in agents:
        lines += ["", f"user {a}", "topic read nocpolicy/v1/fleet/#"]
    for r in readers:
        lines += ["", f"user {r}", "topic read nocpolicy/v1/#"]
    return "\n".join(lines) + "\n"


def make_pki(directory: Path, clients: list[str]) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and one client certificate per name
    (CN = the name: the broker's identity with ``use_identity_as_username``), made with openssl."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=nocpolicy test CA")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in [("server", "server.ext")] + [(c, "client.ext") for c in clients]:
        cn = "127.0.0.1" if name == "server" else name
        ssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", ext)
        os.chmod(d / f"{name}.key", 0o600)
    return d


class Mosquitto:
    def __init__(self, workdir: Path, users: dict[str, str], acl: str, port: int | None = None,
                 pki: Path | None = None):
        self.dir = Path(workdir) / f"mosquitto-{os.getpid()}-{id(self) & 0xffff:x}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.users = dict(users)
        self.proc: subprocess.Popen | None = None
        self.passwd = self.dir / "passwd"
        self.acl = self.dir / "acl"
        self.conf = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.pki = pki
        self._write(acl)

    def _write(self, acl: str) -> None:
        # mosquitto_passwd -U hashes a plain user:password file in one call (fast for 1,000 users)
        self.passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
        os.chmod(self.passwd, 0o600)
        subprocess.run([MOSQUITTO_PASSWD, "-U", str(self.passwd)], check=True, capture_output=True)
        self.acl.write_text(acl)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (f"cafile {self.pki}/ca.pem\ncertfile {self.pki}/server.pem\nkeyfile {self.pki}/server.key\n"
               "require_certificate true\nuse_identity_as_username true\n" if self.pki else "")
            + f"user {pwd.getpwuid(os.getuid()).pw_name}\n"   # as root, do not switch to 'mosquitto'
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

    def start(self, timeout: float = 30.0) -> Mosquitto:
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


# -- clients -----------------------------------------------------------------------


class Probe:
    """A real MQTT client (paho, its own network thread) that records what it receives.

    ``subscribe`` returns after the broker acknowledged the subscription, so a test
    can publish right after it without sleeping.
    """

    def __init__(self, broker: Mosquitto, user: str, *, persistent: bool = False):
        """``persistent``: a session the broker keeps (clean_session off; it survives a
        broker restart with persistence) and queues QoS 1 messages in while the probe is
        away; the probe reconnects by itself within 2 s."""
        import ssl

        import paho.mqtt.client as mqtt
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subacks: set[int] = set()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{user}-{os.getpid()}-{id(self):x}",
                             clean_session=not persistent)
        self.c.reconnect_delay_set(0.2, 2)
        if broker.pki:     # TLS: the client certificate (CN = user) is the identity
            self.c.tls_set(ca_certs=str(broker.pki / "ca.pem"), certfile=str(broker.pki / f"{user}.pem"),
                           keyfile=str(broker.pki / f"{user}.key"), cert_reqs=ssl.CERT_REQUIRED)
        else:
            self.c.username_pw_set(user, broker.users[user])
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda c, u, mid, rc, p: self._subacks.add(mid)
        self.c.connect("127.0.0.1", broker.port)
        self.c.loop_start()

    def _on_message(self, c, u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def subscribe(self, topic: str) -> Probe:
        wait_for(self.c.is_connected, 10, what="probe connected")
        _, mid = self.c.subscribe(topic, qos=1)
        wait_for(lambda: mid in self._subacks, 10, what=f"SUBACK for {topic}")
        return self

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def find(self, topic: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait(self, topic: str, timeout: float = 30.0, pred=lambda doc: True) -> dict:
        return wait_for(lambda: next((d for d in reversed(self.find(topic)) if pred(d)), None), timeout,
                        what=f"a message on {topic}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


_HEAD = re.compile(rb'"kind":"([^"]+)","scope":"([^"]+)","node":(?:null|"[^"]*"),"version":(\d+)')


def state_head(payload: bytes) -> dict:
    """kind, scope and version of a fleet state message (the controller writes its head first)."""
    m = _HEAD.search(payload, 0, 400)
    if m is None:
        doc = json.loads(payload)
        return {"kind": doc["kind"], "scope": doc["scope"], "version": doc["version"]}
    return {"kind": m.group(1).decode(), "scope": m.group(2).decode(), "version": int(m.group(3))}


class Swarm:
    """Lightweight simulated agents (aiomqtt, one event loop in a thread): each takes its
    retained plan at ``nodes/<name>/plan`` and acknowledges it at ``nodes/<name>/ack`` like a
    real agent, and records when each plan version arrived (monotonic)."""

    def __init__(self, port: int, names: list[str], password: str, connect_concurrency: int = 50,
                 state: bool = True):
        self.port, self.names, self.password = port, list(names), password
        self.state = state      # also take fleet state (and ack the highest version per stream)
        self.received: dict[str, dict[int, float]] = {n: {} for n in names}
        self.state_seen: dict[str, dict[tuple, float]] = {n: {} for n in names}
        self.acked: dict[str, int] = {}
        self.ready = 0
        self.errors = 0             # connections a simulated agent lost and made again
        self.last_error = ""
        self._concurrency = connect_concurrency
        self._loop = None
        self._thread = None
        self._main = None
        self._stopping = False

    async def _agent(self, name: str, sem) -> None:
        """One simulated agent. Like a real agent it reconnects when its connection fails (a publish
        not acknowledged within the timeout on a loaded machine, a dropped connection): one sim's
        error must not end the others (it did: ``gather`` cancelled every sim, and a bench then
        waited for acks that could no longer come). Errors are counted in ``errors``."""
        import aiomqtt
        root = "nocpolicy/v1/nodes/" + name
        will = aiomqtt.Will(f"{root}/status", json.dumps({"state": "offline", "node": name}), 1, True)
        held: dict = {}
        first = True
        while not self._stopping:
            try:
                async with sem:
                    client = aiomqtt.Client("127.0.0.1", self.port, username=name, password=self.password,
                                            identifier=f"nocpolicyd-{name}", will=will, keepalive=60, timeout=60)
                    await client.__aenter__()
                try:
                    await self._serve(client, name, root, held, first)
                finally:
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
            except aiomqtt.MqttError as exc:
                if self._stopping or asyncio.current_task().cancelling():
                    # stop(): aiomqtt turned the cancel into "Disconnected during message
                    # iteration"; reconnecting here kept stop() waiting out its join timeout
                    raise asyncio.CancelledError from exc
                self.errors += 1
                self.last_error = f"{name}: {exc}"
                await asyncio.sleep(0.5)
            first = False

    async def _serve(self, client, name: str, root: str, held: dict, first: bool) -> None:
        await client.subscribe(f"{root}/plan", qos=1)
        if self.state:
            for f in ("nocpolicy/v1/fleet/+/snap", "nocpolicy/v1/fleet/+/delta/+", f"{root}/state/+/snap",
                      f"{root}/state/+/delta/+"):
                await client.subscribe(f, qos=1)
        await client.publish(f"{root}/status", json.dumps({"state": "online", "node": name, "role": "agent",
                                                           "version": "sim"}), qos=1, retain=True)
        if first:
            self.ready += 1
        async for msg in client.messages:
            if not msg.payload:
                continue
            t = time.monotonic()
            if "/state/" in msg.topic.value or msg.topic.value.startswith("nocpolicy/v1/fleet/"):
                # fleet state: hold the highest version per stream and ack it (a simulated agent
                # reads only the head: the real agent does the applying)
                await self._state(client, name, root, held, state_head(msg.payload), t)
                continue
            doc = json.loads(msg.payload)
            v = doc["version"]
            self.received[name].setdefault(v, t)
            ack = {"node": name, "version": v, "result": "applied", "detail": "simulated", "at": "",
                   "daemon": "sim"}
            await client.publish(f"{root}/ack", json.dumps(ack), qos=1, retain=True)
            self.acked[name] = v

    async def _state(self, client, name: str, root: str, held: dict, doc: dict, t: float) -> None:
        kind, scope, v = doc["kind"], doc["scope"], doc["version"]
        streams = held.setdefault(kind, {})
        if v <= streams.get(scope, 0):
            return
        streams[scope] = v
        self.state_seen[name][(kind, scope, v)] = t
        await client.publish(f"{root}/state/ack", json.dumps({"node": name, "held": held, "last": {}}),
                             qos=1, retain=True)

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self._concurrency)
        await asyncio.gather(*(self._agent(n, sem) for n in self.names))

    def start(self, timeout: float = 60.0) -> Swarm:
        self._loop = asyncio.new_event_loop()

        def main():
            asyncio.set_event_loop(self._loop)
            self._main = self._loop.create_task(self._run())
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._loop.run_until_complete(self._main)
            rest = asyncio.all_tasks(self._loop)     # aiomqtt's internal tasks: end them quietly
            for t in rest:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            self._loop.close()
        self._thread = threading.Thread(target=main, name="swarm", daemon=True)
        self._thread.start()
        wait_for(lambda: self.ready == len(self.names), timeout, what=f"{len(self.names)} simulated agents")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """End every sim (and the thread). A cancel aiomqtt swallowed (it happens mid-iteration) is
        simply sent again: each round cancels whatever task is still running."""
        if not (self._loop and self._main):
            return
        self._stopping = True

        def cancel_all():
            for t in asyncio.all_tasks(self._loop):
                t.cancel()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):      # the loop already closed
                self._loop.call_soon_threadsafe(cancel_all)
            self._thread.join(0.5)
        assert not self._thread.is_alive(), "the simulated agents did not stop"
