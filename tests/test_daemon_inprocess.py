"""The Daemon in-process with test components: all-or-nothing reloads and ordering."""

from __future__ import annotations

import asyncio

from helpers import free_port
from nocpolicy.app import Daemon
from nocpolicy.component import Component
from nocpolicy.errors import NocpolicyError
from nocpolicy.options import Options


def make_types(journal: list, fail: dict):
    class Recorder(Component):
        async def prepare(self, policy, change):
            journal.append(("prepare", self.name, policy.version))
            how = fail.get(self.name)
            if how == "refuse" and not change.initial:
                raise NocpolicyError("interface eth9 does not exist")
            if how == "bug" and not change.initial:
                raise KeyError("oops")
            return lambda: journal.append(("commit", self.name, policy.version))

        async def start(self):
            journal.append(("start", self.name))
            await super().start()

        async def stop(self):
            journal.append(("stop", self.name))
            await super().stop()

    class First(Recorder):
        name = "first"

    class Second(Recorder):
        name = "second"

    return [First, Second]


async def run_daemon(policy_dir, tmp_path, journal, fail, body):
    opts = Options(policies=str(policy_dir), state_dir=str(tmp_path / "state"), watch=False,
                   metrics_listen=("127.0.0.1", free_port()), admin_listen=("127.0.0.1", free_port()))
    d = Daemon(opts, types=make_types(journal, fail))
    runner = asyncio.create_task(d.run())
    for _ in range(200):
        if d._ready or runner.done():
            break
        await asyncio.sleep(0.02)
    assert d._ready, "daemon did not become ready"
    try:
        await body(d)
    finally:
        d.stop_event.set()
        assert await asyncio.wait_for(runner, 10) == 0


def edit(policy_dir):
    with open(policy_dir / "customers.yaml", "a") as f:
        f.write("  - id: c9001\n    name: New\n")


async def test_start_order_commit_after_all_prepared_and_reverse_stop(policy_dir, tmp_path):
    journal: list = []

    async def body(d):
        v1 = d.policy.version
        edit(policy_dir)
        out = await d.reload("test")
        assert out["ok"] and out["changed"] and out["summary"] == "customers +c9001"
        v2 = d.policy.version
        assert journal[-4:] == [("prepare", "first", v2), ("prepare", "second", v2),
                                ("commit", "first", v2), ("commit", "second", v2)]
        assert journal[:6] == [("prepare", "first", v1), ("prepare", "second", v1),
                               ("commit", "first", v1), ("commit", "second", v1),
                               ("start", "first"), ("start", "second")]

    await run_daemon(policy_dir, tmp_path, journal, {}, body)
    assert journal[-2:] == [("stop", "second"), ("stop", "first")]


async def test_a_refusing_component_refuses_the_whole_reload(policy_dir, tmp_path):
    journal: list = []

    async def body(d):
        v1 = d.policy.version
        edit(policy_dir)
        n = len(journal)
        out = await d.reload("test")
        assert out == {"ok": False, "errors": ["second: interface eth9 does not exist"], "version": v1}
        assert [j[0] for j in journal[n:]] == ["prepare", "prepare"]          # nothing committed
        assert d.policy.version == v1
        assert d.status()["last_error"]["errors"] == ["second: interface eth9 does not exist"]
        assert d.registry.get_sample_value("nocpolicy_policy_reloads_total", {"result": "failure"}) == 1

    await run_daemon(policy_dir, tmp_path, journal, {"second": "refuse"}, body)


async def test_a_bug_in_prepare_is_a_refusal_not_a_crash(policy_dir, tmp_path):
    journal: list = []

    async def body(d):
        v1 = d.policy.version
        edit(policy_dir)
        d.reload_event.set()          # what SIGHUP does: the reload loop must survive the bug
        for _ in range(200):
            if d.last_error:
                break
            await asyncio.sleep(0.02)
        assert d.last_error["errors"] == ["first: internal error: KeyError('oops')"]
        assert d.policy.version == v1 and not d.stop_event.is_set()
        out = await d.reload("again")
        assert out["ok"] is False

    await run_daemon(policy_dir, tmp_path, journal, {"first": "bug"}, body)


async def test_stop_requested_during_start_up_stops_cleanly(policy_dir, tmp_path):
    journal: list = []
    opts = Options(policies=str(policy_dir), state_dir=str(tmp_path / "state"), watch=False,
                   metrics_listen=("127.0.0.1", free_port()), admin_listen=("127.0.0.1", free_port()))
    d = Daemon(opts, types=make_types(journal, {}))
    d.stop_event.set()            # as if SIGTERM arrived while components were starting
    assert await asyncio.wait_for(d.run(), 10) == 0
    assert [j[:2] for j in journal if j[0] in ("start", "stop")] == [
        ("start", "first"), ("start", "second"), ("stop", "second"), ("stop", "first")]
    assert not d._ready


def test_watcher_snapshot_sees_policy_and_list_files_not_the_state_dir(tmp_path):
    from nocpolicy.app import _snapshot
    pol = tmp_path / "policies"
    (pol / "lists").mkdir(parents=True)
    (pol / "state").mkdir()
    (pol / "a.yaml").write_text("plans: []\n")
    (pol / "lists" / "l.txt").write_text("x.example\n")
    before = _snapshot(str(pol), str(pol / "state"))
    (pol / "state" / "nocpolicy.db-wal").write_bytes(b"changes all the time")
    (pol / ".a.yaml.swp").write_text("editor")
    assert _snapshot(str(pol), str(pol / "state")) == before
    (pol / "lists" / "l.txt").write_text("x.example\ny.example\n")
    assert _snapshot(str(pol), str(pol / "state")) != before
