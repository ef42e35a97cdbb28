import signal, time
import pytest
from helpers import DaemonProcess, wait_for
from test_fleet_state import env, post, converged, row, ede, AGENT, BLOCKED  # noqa: F401


@pytest.mark.parametrize("mode", ["separate", "racing"])
def test_scratch(env, mode):
    broker, ctl, agent = env
    ctl.start()
    agent.start()
    wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged")
    agent.signal(signal.SIGKILL)
    agent.proc.wait()
    n = 100 if mode == "separate" else 60
    for i in range(n):
        v0 = ctl.metric("nocpolicy_fleet_state_version", {"kind": "optout"})
        post(ctl, "optout.set", {"customer": "c-home", "on": i % 2 == 0, "reason": f"change {i}"})
        if mode == "separate":
            wait_for(lambda: ctl.metric("nocpolicy_fleet_state_version", {"kind": "optout"}) > v0, 30)
    again = DaemonProcess(agent.workdir, policies=agent.policies, extra_args=agent.extra_args)
    again.start(wait=False)
    if mode == "racing":
        for i in range(n, n + 40):
            post(ctl, "optout.set", {"customer": "c-home", "on": i % 2 == 0, "reason": f"change {i}"})
    try:
        wait_for(lambda: converged(ctl, "optout"), 60, what="agent converged after reconnecting")
    finally:
        print(row(ctl, "optout"))
        print(again.log()[-4000:])
    again.kill()
