from __future__ import annotations

import os
import secrets
import shutil

import pytest

from helpers import DaemonProcess, copy_policies, sh


def need_root_netns() -> str | None:
    """Why network-namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/run-all.sh installs it)"
    return None


@pytest.fixture
def router():
    """A network namespace standing for a router, with the example policy's downstream
    interface (``nocp-down0``, a veth) up; deleted at the end of the test."""
    if need_root_netns():
        pytest.skip(need_root_netns())
    name = f"nocpr-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "add", "nocp-down0", "type", "veth", "peer", "name", "peer0")
        sh("ip", "-n", name, "link", "set", "nocp-down0", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def hist(tmp_path):
    """A session history (sessions/history.py) on a fresh state store."""
    from nocpolicy.sessions.history import History
    from nocpolicy.store import Store

    store = Store(tmp_path / "db.sqlite")
    h = History(store)
    yield h
    h.close()
    store.close()


@pytest.fixture
def policy_dir(tmp_path):
    """A private copy of the example policies."""
    return copy_policies(tmp_path)


@pytest.fixture
def daemon(tmp_path):
    """Factory for real nocpolicyd processes; all are stopped at the end of the test."""
    started: list[DaemonProcess] = []

    def start(policies=None, extra_args=None, wait=True, env=None) -> DaemonProcess:
        d = DaemonProcess(tmp_path, policies=policies, extra_args=extra_args, env=env)
        started.append(d)
        return d.start(wait=wait)

    yield start
    for d in started:
        if d.proc and d.proc.poll() is None:
            d.kill()
