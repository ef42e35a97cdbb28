"""Failures inside the daemon (issue 14): a background loop that fails is restarted with
backoff and logged with its traceback; its component reads ``failed`` only while it is
failing and recovers by itself once the cause is gone (a good reload). A command either
completes or changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from helpers import free_port, http_get
from nocpolicy import tasks
from nocpolicy.app import Daemon, component_types
from nocpolicy.component import Component
from nocpolicy.errors import CommandError
from nocpolicy.options import Options

BAD = "c9001"       # a customer whose presence in the policy makes the test loop fail


class Flaky(Component):
    """A component whose background loop fails for as long as the policy holds BAD."""

    name = "flaky"
    runs = 0

    async def start(self):
        self.tasks.supervise("loop", self._loop)
        await super().start()

    async def _loop(self):
        type(self).runs += 1
        while True:
            if any(c.id == BAD for c in self.ctx.policy().customers):
                raise OverflowError("Python int too large to convert to C int")
            await asyncio.sleep(0.02)


async def poll(pred, what: str, within: float = 30.0):
    end = asyncio.get_running_loop().time() + within
    while not pred():
        assert asyncio.get_running_loop().time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def run_daemon(policy_dir, tmp_path, types, body):
    opts = Options(policies=str(policy_dir), state_dir=str(tmp_path / "state"), watch=False, enforce="off",
                   dns_listen=[("127.0.0.1", free_port())],
                   metrics_listen=("127.0.0.1", free_port()), admin_listen=("127.0.0.1", free_port()))
    d = Daemon(opts, types=types(opts) if callable(types) else types)
    runner = asyncio.create_task(d.run())
    await poll(lambda: d._ready or runner.done(), "the daemon to start")
    assert d._ready, "daemon did not become ready"
    try:
        await body(d, opts)
    finally:
        d.stop_event.set()
        assert await asyncio.wait_for(runner, 30) == 0


def readyz(opts) -> int:
    host, port = opts.metrics_listen
    return http_get(f"http://{host}:{port}/readyz")[0]


async def test_failing_loop_is_restarted_logged_and_recovers_after_a_good_reload(
        policy_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tasks.TaskSet, "backoff_first", 0.05)
    monkeypatch.setattr(tasks.TaskSet, "stable_after", 0.5)
    caplog.set_level(logging.ERROR, logger="nocpolicy.tasks")
    customers = policy_dir / "customers.yaml"
    good = customers.read_text()

    async def body(d, opts):
        flaky = d.ctx.components["flaky"]
        assert flaky.state == "running" and await asyncio.to_thread(readyz, opts) == 200
        customers.write_text(good + f"  - id: {BAD}\n    name: Typo\n")
        assert (await d.reload("test"))["ok"]
        await poll(lambda: flaky.tasks.restarts.get("loop", 0) >= 2, "the loop to be restarted twice")
        assert flaky.state == "failed" and "OverflowError" in flaky.detail
        assert await asyncio.to_thread(readyz, opts) == 503
        failures = [r for r in caplog.records if "flaky:loop" in r.getMessage()]
        assert failures and failures[0].exc_info and failures[0].exc_info[0] is OverflowError, \
            "logged with its traceback"
        assert "restarting in" in failures[0].getMessage()
        metrics = d.registry.get_sample_value("nocpolicy_task_restarts_total",
                                              {"component": "flaky", "task": "loop"})
        assert metrics and metrics >= 2
        # the cause goes away: the next reload restarts the loop at once and it stays up
        customers.write_text(good)
        assert (await d.reload("test"))["ok"]
        await poll(lambda: flaky.state == "running", "the component to recover by itself")
        assert await asyncio.to_thread(readyz, opts) == 200
        runs = Flaky.runs
        await asyncio.sleep(0.3)
        assert Flaky.runs == runs and flaky.state == "running", "healthy: no more restarts"

    await run_daemon(policy_dir, tmp_path, [Flaky], body)


async def test_backoff_doubles_up_to_the_ceiling():
    started: list[float] = []
    ts = tasks.TaskSet("t")
    ts.backoff_first, ts.backoff_max = 0.05, 0.2

    async def always_fails():
        started.append(asyncio.get_running_loop().time())
        raise RuntimeError("boom")

    ts.supervise("x", always_fails)
    await poll(lambda: len(started) >= 5, "five starts")
    await ts.close()
    gaps = [b - a for a, b in zip(started, started[1:], strict=False)]
    # each wait is at least the backoff (never shorter: a fast-failing loop cannot spin)
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps[3] >= 0.2
    assert ts.failing == {"x": "RuntimeError: boom"}


async def test_declare_with_an_absurd_profile_changes_nothing(policy_dir, tmp_path):
    """A profile whose max_duration cannot be added to a date (10^14 s) used to record and
    enforce the emergency, then answer 'internal error'; status and lift failed after it."""

    async def body(d, _opts):
        qos = d.ctx.components["qos"]
        prof = qos.policy.profiles_by_id["earthquake"]
        absurd = dataclasses.replace(prof, max_duration=1e14)
        qos.policy = dataclasses.replace(qos.policy, profiles=(absurd,))
        plan = qos.plan
        with pytest.raises(CommandError) as info:
            await d.commands.dispatch("emergency.declare", {"profile": "earthquake", "reason": "drill"},
                                      actor="test", source="internal")
        assert info.value.status == 400 and "max_duration" in str(info.value)
        status = await d.commands.dispatch("emergency.status", {}, actor="test", source="internal")
        assert status["active"] is None and status["history"] == []
        assert qos.plan is plan, "the rules in force did not change"
        audit = d.ctx.store.audit_log(subject="emergency:earthquake", limit=10)
        assert audit == []

    await run_daemon(policy_dir, tmp_path, component_types, body)
