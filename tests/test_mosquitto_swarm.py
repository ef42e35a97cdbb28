"""The simulated agents of the fleet benches (``mosquitto_fixture.Swarm``) on a real mosquitto: one
sim losing its connection must not end the others, and it comes back like a real agent.

Regression: the sims ran under one ``asyncio.gather``; one sim's error (a publish not acknowledged
in time on a loaded machine) cancelled all of them, and bench/fleet_state_bench.py then waited
for acknowledgements that could no longer come (its "offline step" failures)."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt

from helpers import wait_for
from mosquitto_fixture import Mosquitto, Probe, Swarm, fleet_acl

SIMS = ["sim-a", "sim-b", "sim-c"]


def test_one_sim_kicked_off_the_broker_reconnects_and_the_others_go_on(tmp_path):
    users = {"ctl": "ctl-pw", "watcher": "w-pw", **{s: "sim-pw" for s in SIMS}}
    broker = Mosquitto(tmp_path, users, fleet_acl("ctl", readers=["watcher"], agents=SIMS)).start()
    swarm = Swarm(broker.port, SIMS, "sim-pw").start(timeout=30)
    watcher = Probe(broker, "watcher").subscribe("nocpolicy/v1/nodes/+/state/ack")
    ctl = Probe(broker, "ctl")

    def publish(version: int) -> None:
        doc = {"kind": "optout", "scope": "fleet", "node": None, "version": version, "controller": "ctl",
               "issued_at": "", "entries": {}}
        ctl.publish("nocpolicy/v1/fleet/optout/snap", json.dumps(doc), retain=True)

    def held(version: int) -> set[str]:
        return {s for s in SIMS for d in watcher.find(f"nocpolicy/v1/nodes/{s}/state/ack")
                if d["held"].get("optout", {}).get("fleet") == version}
    try:
        publish(1)
        wait_for(lambda: held(1) == set(SIMS), 30, what="every sim acks version 1")
        # another client takes sim-b's client id: the broker drops sim-b's connection
        thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="nocpolicyd-sim-b")
        thief.username_pw_set("sim-b", "sim-pw")
        thief.connect("127.0.0.1", broker.port)
        thief.loop_start()
        wait_for(lambda: swarm.errors >= 1, 30, what="sim-b lost its connection")
        thief.disconnect()
        thief.loop_stop()
        publish(2)
        wait_for(lambda: held(2) == set(SIMS), 30, what="every sim, sim-b again too, acks version 2")
        assert "sim-b" in swarm.last_error
    finally:
        watcher.close()
        ctl.close()
        swarm.stop()
        broker.stop()
