"""deploy/container: Containerfile, compose.yaml and the mosquitto broker config.

Docker and Podman do not run on CI machines, so the image is not built here. What
can be checked without them is checked for real: the Containerfile's command line
is parsed by nocpolicyd's own option parser, its HEALTHCHECK command is run against
a real daemon, the entrypoint script runs, compose.yaml's wiring is consistent
(files, ports, secrets, service names, scrape target), and the mosquitto config,
password file generator and ACL run in a real mosquitto with real mosquitto_pub /
mosquitto_sub clients.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from helpers import REPO, DaemonProcess, free_port, wait_for

CONTAINER = REPO / "deploy" / "container"
CONTAINERFILE = CONTAINER / "Containerfile"
COMPOSE = CONTAINER / "compose.yaml"
MOSQUITTO = CONTAINER / "mosquitto"


# -- Containerfile ---------------------------------------------------------------------


def instructions(path: Path = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def last(name: str) -> str:
    got = [args for word, args in instructions() if word == name]
    assert got, f"no {name} in {CONTAINERFILE}"
    return got[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def container_command() -> list[str]:
    return exec_form(last("CMD"))


def test_containerfile_base_user_and_files():
    assert instructions()[0] == ("FROM", "python:3.11-slim")
    user = last("USER").split(":")[0]
    assert user not in ("root", "0", "")
    # The user is created in the image with a fixed non-zero uid (compose's tmpfs uses it).
    assert f"--uid 10001 --gid {user} " in " ".join(a for w, a in instructions() if w == "RUN")
    for word, args in instructions():
        if word != "COPY":
            continue
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            matches = list(REPO.glob(src))
            assert matches or "*" in src, f"COPY {src}: not in the repository (build context is the repo root)"
    entry = exec_form(last("ENTRYPOINT"))
    assert entry == ["/usr/local/bin/nocpolicy-entrypoint"]


def test_dockerignore_lets_every_copied_file_in():
    ignore = (CONTAINER / "Containerfile.dockerignore").read_text().splitlines()
    allowed = [p[1:].removesuffix("/**") for p in ignore if p.startswith("!")]
    assert "**" in ignore, "ignore everything by default: the repo root holds .venv/, state/ and .git/"
    for word, args in instructions():
        if word == "COPY":
            for src in [p for p in args.split() if not p.startswith("--")][:-1]:
                assert src in allowed, f"COPY {src} is excluded by Containerfile.dockerignore"


def test_container_command_is_accepted_by_nocpolicyd():
    from nocpolicy.options import parse_options
    cmd = container_command()
    assert cmd[0] == "nocpolicyd"
    opts = parse_options(cmd[1:])
    assert opts.policies == "/etc/nocpolicy/policies" and opts.state_dir == "/var/lib/nocpolicy"
    # Prometheus in another container must reach metrics; the admin API stays inside.
    assert opts.metrics_listen[0] == "0.0.0.0"
    assert opts.admin_listen[0] == "127.0.0.1"
    exposed = last("EXPOSE").split()
    assert f"{opts.metrics_listen[1]}/tcp" in exposed
    for _host, port in opts.dns_listen:
        assert {f"{port}/udp", f"{port}/tcp"} <= set(exposed)


def healthcheck_argv() -> list[str]:
    args = last("HEALTHCHECK")
    assert " CMD " in f" {args} "
    return exec_form(args.split("CMD", 1)[1].strip())


def test_healthcheck_probes_a_real_daemon(daemon):
    from nocpolicy.options import parse_options
    argv = healthcheck_argv()
    port = parse_options(container_command()[1:]).metrics_listen[1]
    assert argv[0] == "python" and f"127.0.0.1:{port}/healthz" in argv[-1]
    d = daemon()
    probe = [sys.executable, *argv[1:]]
    probe[-1] = probe[-1].replace(f"127.0.0.1:{port}", f"127.0.0.1:{d.metrics_port}")
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    d.stop()
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


def test_entrypoint_makes_a_private_password_file(tmp_path):
    script = CONTAINER / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    secret = tmp_path / "mqtt_nocpolicyd"
    secret.write_text("s3cret\n")
    secret.chmod(0o444)
    runtime = tmp_path / "run"
    env = dict(os.environ, NOCPOLICY_MQTT_PASSWORD_SECRET=str(secret), NOCPOLICY_RUNTIME_DIR=str(runtime),
               NOCPOLICY_MQTT="mqtt://nocpolicyd@mosquitto:1883")
    # Stand in for nocpolicyd with a script of that name that prints its arguments.
    fake = tmp_path / "bin" / "nocpolicyd"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env["PATH"] = f"{fake.parent}:{env['PATH']}"
    out = subprocess.run([str(script), "nocpolicyd", "--enforce", "off"], env=env, capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    args = out.stdout.split("\n")
    pw = Path(args[args.index("--mqtt-password-file") + 1])
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600 and pw.read_text() == "s3cret\n"
    assert args[args.index("--mqtt") + 1] == "mqtt://nocpolicyd@mosquitto:1883"
    assert args[:2] == ["--enforce", "off"]
    # The password file it makes is one nocpolicyd's reader accepts.
    from nocpolicy.fleet.broker import read_password_file
    assert read_password_file(str(pw)) == "s3cret"
    # Other commands (nocpolicyctl ...) are left alone.
    out = subprocess.run([str(script), "echo", "status"], env=env, capture_output=True, text=True, timeout=10)
    assert out.stdout == "status\n"


# -- compose.yaml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "-f", str(path), "config", "-q"], capture_output=True, text=True,
                          timeout=60, cwd=path.parent)


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not installed (Debian package docker-compose; tests/run-all.sh)")
def test_compose_file_passes_the_compose_schema(tmp_path):
    """docker-compose (v1, Debian) validates against the compose schema without a daemon."""
    res = compose_config(COMPOSE)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1))
    res = compose_config(broken)
    assert res.returncode != 0 and "restrat" in res.stderr


def test_compose_services_and_files(compose):
    services = compose["services"]
    assert {"nocpolicyd", "mosquitto", "mosquitto-passwd", "prometheus", "grafana"} <= set(services)
    declared_secrets = set(compose.get("secrets", {}))
    declared_volumes = set(compose.get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for sec in svc.get("secrets", []):
            assert (sec if isinstance(sec, str) else sec["source"]) in declared_secrets, (name, sec)
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (CONTAINER / src).resolve().exists(), f"{name}: {src} does not exist"
            else:
                assert src in declared_volumes, f"{name}: volume {src} not declared"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    for sec in compose["secrets"].values():
        assert sec["file"].startswith("./secrets/")
    assert "secrets/" in (CONTAINER / ".gitignore").read_text().split()
    build = services["nocpolicyd"]["build"]
    assert (CONTAINER / build["context"] / build["dockerfile"]).resolve() == CONTAINERFILE
    passwd = services["mosquitto-passwd"]["entrypoint"]
    assert passwd[1] == "/mosquitto/config/make-passwd.sh"
    assert services["mosquitto"]["depends_on"]["mosquitto-passwd"]["condition"] == \
        "service_completed_successfully"


def test_compose_wiring_matches_the_configs(compose):
    from nocpolicy.fleet.broker import parse_url
    from nocpolicy.options import parse_options
    services = compose["services"]
    env = services["nocpolicyd"]["environment"]
    host, port, user, tls = parse_url(env["NOCPOLICY_MQTT"])
    assert host == "mosquitto" and port == 1883 and not tls
    conf = (MOSQUITTO / "mosquitto.conf").read_text().split("\n")
    assert f"listener {port}" in conf
    assert f"mqtt_{user}" in services["mosquitto-passwd"]["secrets"]
    assert env["NOCPOLICY_MQTT_PASSWORD_SECRET"] == f"/run/secrets/mqtt_{user}"
    # Prometheus scrapes nocpolicyd at the port the image's command listens on.
    metrics_port = parse_options(container_command()[1:]).metrics_listen[1]
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    prom = yaml.safe_load((CONTAINER / next(k for k, v in mounts.items()
                                            if v == "/etc/prometheus/prometheus.yml")).read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "nocpolicy")
    assert job["static_configs"][0]["targets"] == [f"nocpolicyd:{metrics_port}"]
    assert mounts["../prometheus/rules"] == "/etc/prometheus/rules"
    # Grafana: the datasource points at the prometheus service, the dashboard lands where
    # the provider looks.
    prov = REPO / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "nocpolicy.yaml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    provider = yaml.safe_load((prov / "dashboards" / "nocpolicy.yaml").read_text())["providers"][0]
    gmounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    dash_target = gmounts["../grafana/nocpolicy-dashboard.json"]
    assert Path(dash_target).parent == Path(provider["options"]["path"])
    assert gmounts["../grafana/provisioning"] == "/etc/grafana/provisioning"


# -- mosquitto: config, password file, ACL -----------------------------------------------

needs_mosquitto = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mosquitto", "mosquitto_passwd", "mosquitto_pub", "mosquitto_sub")),
    reason="mosquitto and mosquitto-clients not installed (tests/run-all.sh installs them)")

USERS = {"nocpolicyd": "pw-daemon", "noc-controller": "pw-ctl", "ti-feed": "pw-ti",
         "nocpolicy-monitor": "pw-mon", "edge-tokyo-1": "pw-edge1", "edge-tokyo-2": "pw-edge2"}


class Broker:
    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.proc: subprocess.Popen | None = None

    def pub(self, user: str, topic: str, message: str, password: str | None = None,
            retain: bool = False) -> subprocess.CompletedProcess:
        argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-q", "1", "-t", topic,
                "-m", message, "-u", user, "-P", password if password is not None else USERS[user]]
        if retain:
            argv.append("-r")
        return subprocess.run(argv, capture_output=True, text=True, timeout=10)


class Sub:
    """A real mosquitto_sub collecting 'topic payload' lines in a thread."""

    def __init__(self, broker: Broker, user: str, topic: str):
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        # stdbuf: mosquitto_sub's stdout is block-buffered into a pipe; lines are needed live.
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", user, "-P", USERS[user],
             "-t", topic, "-v", "-d", "-q", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.subscribed.wait(10):
            self.close()
            raise AssertionError(f"mosquitto_sub as {user} did not subscribe: {self.lines}")

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("Subscribed (mid"):
                self.subscribed.set()
            elif not line.startswith("Client "):
                self.lines.append(line)

    def got(self, line: str) -> bool:
        return line in self.lines

    def close(self):
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def broker():
    # mosquitto started as root drops to the mosquitto user: its files must be reachable.
    root = Path(tempfile.mkdtemp(prefix="nocpolicy-mq-"))
    root.chmod(0o755)
    secrets = root / "secrets"
    secrets.mkdir(mode=0o700)
    for user, pw in USERS.items():
        (secrets / f"mqtt_{user}").write_text(pw + "\n")
    res = subprocess.run(["sh", str(MOSQUITTO / "make-passwd.sh"), str(secrets), str(root / "passwd")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE((root / "passwd").stat().st_mode) == 0o600
    assert {line.split(":")[0] for line in (root / "passwd").read_text().splitlines()} == set(USERS)
    data = root / "data"
    data.mkdir()
    shutil.copy(MOSQUITTO / "acl", root / "acl")
    (root / "acl").chmod(0o644)
    if os.geteuid() == 0 and _has_user("mosquitto"):
        shutil.chown(data, "mosquitto")
    port = free_port()
    # The shipped config with only the container paths and the port replaced.
    conf = (MOSQUITTO / "mosquitto.conf").read_text()
    for old, new in (("/mosquitto/auth/passwd", str(root / "passwd")), ("/mosquitto/config/acl", str(root / "acl")),
                     ("/mosquitto/data/", f"{data}/"), ("\nlistener 1883\n", f"\nlistener {port} 127.0.0.1\n")):
        assert old in conf, old
        conf = conf.replace(old, new)
    (root / "mosquitto.conf").write_text(conf)
    b = Broker(root, port)
    log = open(root / "mosquitto.log", "wb")
    b.proc = subprocess.Popen(["mosquitto", "-c", str(root / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port) or (b.proc.poll() is not None and _fail(root)), 10,
                 what="mosquitto listening")
        yield b
    finally:
        b.proc.terminate()
        try:
            b.proc.wait(5)
        except subprocess.TimeoutExpired:
            b.proc.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _fail(root: Path):
    raise AssertionError("mosquitto exited:\n" + (root / "mosquitto.log").read_text(errors="replace"))


def deliver(sub: Sub, broker: Broker, denied: list[tuple[str, str]], sentinel: tuple[str, str]) -> None:
    """Publish the denied messages, then an allowed sentinel from the same users' path;
    once the sentinel arrives, anything denied would have arrived before it."""
    for user, topic in denied:
        broker.pub(user, topic, "denied")
    user, topic = sentinel
    assert broker.pub(user, topic, "sentinel").returncode == 0
    wait_for(lambda: sub.got(f"{topic} sentinel"), 10, what=f"sentinel on {topic}")
    leaked = [line for line in sub.lines if line.endswith(" denied")]
    assert not leaked, f"the ACL let through: {leaked}"


@needs_mosquitto
def test_broker_refuses_anonymous_and_wrong_passwords(broker):
    bad = broker.pub("nocpolicyd", "nocpolicy/v1/events/x", "m", password="wrong")
    assert bad.returncode != 0 and "not authorised" in (bad.stdout + bad.stderr).lower()
    anon = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "x", "-m", "m"],
                          capture_output=True, text=True, timeout=10)
    assert anon.returncode != 0
    assert broker.pub("nocpolicyd", "nocpolicy/v1/events/x", "m").returncode == 0


@needs_mosquitto
def test_acl_commands_only_in_ones_own_name(broker):
    sub = Sub(broker, "nocpolicyd", "nocpolicy/v1/cmd/#")
    try:
        deliver(sub, broker,
                denied=[("noc-controller", "nocpolicy/v1/cmd/ti-feed/list.update"),
                        ("ti-feed", "nocpolicy/v1/cmd/noc-controller/emergency.declare"),
                        ("nocpolicy-monitor", "nocpolicy/v1/cmd/nocpolicy-monitor/optout.set"),
                        # one topic level for the verb, as the daemon subscribes cmd/+/+
                        ("noc-controller", "nocpolicy/v1/cmd/noc-controller/a/b")],
                sentinel=("ti-feed", "nocpolicy/v1/cmd/ti-feed/list.update"))
        assert broker.pub("noc-controller", "nocpolicy/v1/cmd/noc-controller/status", "ok").returncode == 0
        wait_for(lambda: sub.got("nocpolicy/v1/cmd/noc-controller/status ok"), 10, what="own command")
    finally:
        sub.close()


@needs_mosquitto
def test_acl_replies_reach_only_the_asker(broker):
    mine = Sub(broker, "ti-feed", "nocpolicy/v1/reply/#")
    try:
        deliver(mine, broker, denied=[("nocpolicyd", "nocpolicy/v1/reply/noc-controller/r1")],
                sentinel=("nocpolicyd", "nocpolicy/v1/reply/ti-feed/r2"))
    finally:
        mine.close()


@needs_mosquitto
def test_acl_agents_read_their_own_plan_and_ack_it(broker):
    # The controller (nocpolicyd) publishes retained plans for two nodes.
    for node in ("edge-tokyo-1", "edge-tokyo-2"):
        assert broker.pub("nocpolicyd", f"nocpolicy/v1/nodes/{node}/plan", f"plan-{node}", retain=True).returncode == 0
    agent = Sub(broker, "edge-tokyo-1", "nocpolicy/v1/nodes/+/plan")
    try:
        wait_for(lambda: agent.got("nocpolicy/v1/nodes/edge-tokyo-1/plan plan-edge-tokyo-1"), 10,
                 what="the agent's own retained plan")
        # Retained messages arrive in one burst on subscribe; the other node's is not in it.
        deliver(agent, broker, denied=[],
                sentinel=("nocpolicyd", "nocpolicy/v1/nodes/edge-tokyo-1/plan"))
        assert not any("edge-tokyo-2" in line for line in agent.lines)
    finally:
        agent.close()
    ctl = Sub(broker, "nocpolicyd", "nocpolicy/v1/nodes/+/ack")
    try:
        deliver(ctl, broker, denied=[("edge-tokyo-1", "nocpolicy/v1/nodes/edge-tokyo-2/ack"),
                                     ("edge-tokyo-1", "nocpolicy/v1/nodes/edge-tokyo-1/plan"),
                                     # nor can the controller fake an agent's convergence
                                     ("nocpolicyd", "nocpolicy/v1/nodes/edge-tokyo-1/ack"),
                                     ("noc-controller", "nocpolicy/v1/nodes/edge-tokyo-1/ack")],
                sentinel=("edge-tokyo-1", "nocpolicy/v1/nodes/edge-tokyo-1/ack"))
    finally:
        ctl.close()
    # Nor can the agent replace its own retained plan.
    broker.pub("edge-tokyo-1", "nocpolicy/v1/nodes/edge-tokyo-1/plan", "hijack", retain=True)
    ctl = Sub(broker, "edge-tokyo-1", "nocpolicy/v1/nodes/edge-tokyo-1/plan")
    try:
        wait_for(lambda: ctl.lines, 10, what="retained plan")
        assert ctl.lines == ["nocpolicy/v1/nodes/edge-tokyo-1/plan plan-edge-tokyo-1"]
    finally:
        ctl.close()


@needs_mosquitto
def test_acl_monitor_reads_events_and_status_only(broker):
    mon = Sub(broker, "nocpolicy-monitor", "nocpolicy/v1/#")
    try:
        deliver(mon, broker, denied=[("noc-controller", "nocpolicy/v1/cmd/noc-controller/optout.set"),
                                     ("nocpolicyd", "nocpolicy/v1/reply/noc-controller/r1"),
                                     ("nocpolicyd", "nocpolicy/v1/nodes/edge-tokyo-1/plan")],
                sentinel=("nocpolicyd", "nocpolicy/v1/events/reload"))
        assert broker.pub("nocpolicyd", "nocpolicy/v1/nodes/edge-tokyo-1/status", "online").returncode == 0
        wait_for(lambda: mon.got("nocpolicy/v1/nodes/edge-tokyo-1/status online"), 10, what="status")
    finally:
        mon.close()


def test_shell_scripts_parse():
    for script in (MOSQUITTO / "make-passwd.sh", CONTAINER / "entrypoint.sh"):
        res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"
        assert shlex.split(script.read_text().splitlines()[0]) == ["#!/bin/sh"]


# -- the real daemon through this broker and ACL -------------------------------------------


def mqtt_args(broker: Broker, user: str, workdir: Path) -> list[str]:
    pw = workdir / f"mqtt-{user}.password"
    pw.write_text(USERS[user] + "\n")
    pw.chmod(0o600)
    return ["--mqtt", f"mqtt://{user}@127.0.0.1:{broker.port}", "--mqtt-password-file", str(pw)]


@needs_mosquitto
def test_daemon_commands_and_status_through_the_acl(broker, tmp_path):
    mon = Sub(broker, "nocpolicy-monitor", "nocpolicy/v1/nodes/+/status")
    d = DaemonProcess(tmp_path, extra_args=mqtt_args(broker, "nocpolicyd", tmp_path)).start()
    try:
        wait_for(lambda: any(line.startswith("nocpolicy/v1/nodes/edge-tokyo-1/status ") and
                             json.loads(line.split(" ", 1)[1])["state"] == "online" for line in mon.lines),
                 15, what="the daemon's retained status, seen by the monitor")
        ctl = Sub(broker, "noc-controller", "nocpolicy/v1/reply/noc-controller/#")
        try:
            body = json.dumps({"request_id": "deploy-1", "args": {"customer": "c1002", "on": True,
                                                                   "reason": "deploy test"}})
            assert broker.pub("noc-controller", "nocpolicy/v1/cmd/noc-controller/optout.set", body).returncode == 0
            wait_for(lambda: any(line.startswith("nocpolicy/v1/reply/noc-controller/deploy-1 ") for line in ctl.lines),
                     15, what="the reply to noc-controller")
            reply = json.loads(next(line for line in ctl.lines if "deploy-1" in line).split(" ", 1)[1])
            assert reply["ok"] is True, reply
        finally:
            ctl.close()
        audit = d.ctl_json("audit", "--subject", "customer:c1002")["audit"]
        assert any(r["actor"] == "mqtt:noc-controller" for r in audit), audit
    finally:
        d.stop()
        mon.close()


@needs_mosquitto
def test_fleet_controller_and_agent_converge_through_the_acl(broker, tmp_path):
    (tmp_path / "ctl").mkdir()
    (tmp_path / "agent").mkdir()
    ctl = DaemonProcess(tmp_path / "ctl", extra_args=[
        "--role", "controller", *mqtt_args(broker, "nocpolicyd", tmp_path / "ctl")]).start()
    agent = DaemonProcess(tmp_path / "agent", extra_args=[
        "--role", "agent", "--node", "edge-tokyo-2", "--enforce", "off",
        *mqtt_args(broker, "edge-tokyo-2", tmp_path / "agent")]).start()
    try:
        wait_for(lambda: (agent.metric("nocpolicy_fleet_plan_applied_version") or 0) > 0, 20,
                 what="the agent applying its retained plan")
        wait_for(lambda: (ctl.metric("nocpolicy_fleet_nodes", {"state": "converged"}) or 0) >= 1, 20,
                 what="the controller seeing the agent's ack")
    finally:
        agent.stop()
        ctl.stop()
