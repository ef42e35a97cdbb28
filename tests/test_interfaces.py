"""The typed interfaces between components: real providers satisfy them, app.wire hands them over.

A provider that renames or drops a member would only fail at run time (an agent that
cannot apply its plan, a notice that never leaves); these tests catch it first.
"""

from __future__ import annotations

import inspect

import pytest
from prometheus_client import CollectorRegistry

from helpers import copy_policies
from nocpolicy.app import wire
from nocpolicy.clock import SystemClock
from nocpolicy.component import Context
from nocpolicy.events import EventBus
from nocpolicy.fleet.component import MqttBridge
from nocpolicy.fleet.qoslink import LinuxApplier, RecordingApplier, make_applier
from nocpolicy.interfaces import FleetQos
from nocpolicy.maintenance.component import Maintenance
from nocpolicy.notices.publisher import NoticeLinkListener, NoticePublisher
from nocpolicy.options import Options
from nocpolicy.policy.load import load_policy
from nocpolicy.qos.component import Enforcer
from nocpolicy.store import Store


@pytest.fixture
def ctx(tmp_path):
    policy = load_policy(copy_policies(tmp_path))
    store = Store(tmp_path / "state.db")
    yield Context(options=Options(policies=str(tmp_path / "policies"), state_dir=str(tmp_path)),
                  store=store, clock=SystemClock(), events=EventBus(), registry=CollectorRegistry(),
                  policy=lambda: policy)
    store.close()


def members(proto) -> dict[str, object]:
    out = {n: None for n in getattr(proto, "__annotations__", {})}
    out.update({n: v for n, v in vars(proto).items()
                if not n.startswith("_") and (callable(v) or isinstance(v, property))})
    return out


@pytest.mark.parametrize("proto, provider", [(NoticePublisher, MqttBridge), (FleetQos, Enforcer),
                                             (NoticeLinkListener, Maintenance)])
def test_the_real_provider_has_every_member_of_its_interface(ctx, proto, provider):
    component = provider(ctx)
    for name, declared in members(proto).items():
        assert hasattr(component, name), f"{provider.__name__} lacks {proto.__name__}.{name}"
        if inspect.iscoroutinefunction(declared):
            assert inspect.iscoroutinefunction(getattr(component, name)), f"{provider.__name__}.{name} not async"


def test_wire_hands_each_consumer_its_provider(ctx):
    qos, maintenance, bridge = Enforcer(ctx), Maintenance(ctx), MqttBridge(ctx)
    wire([qos, maintenance, bridge])
    assert bridge.qos is qos
    assert maintenance.mqtt.publisher is bridge
    assert bridge._link_listeners == [maintenance]


def test_without_a_provider_the_consumer_gets_none_and_says_why(ctx):
    maintenance, bridge = Maintenance(ctx), MqttBridge(ctx)
    wire([maintenance])
    assert maintenance.mqtt.publisher is None
    wire([bridge])
    assert bridge.qos is None
    applier = make_applier("auto", bridge.qos)      # an agent without qos records its plan
    assert isinstance(applier, RecordingApplier)
    assert applier.why == "recorded: no enforcement backend on this node"


def test_an_agent_applies_through_qos_only_when_it_enforces(ctx):
    qos = Enforcer(ctx)
    qos.plan_only_reason = "no CAP_NET_ADMIN"
    assert make_applier("auto", qos).why == "recorded: no CAP_NET_ADMIN"
    assert make_applier("off", qos).why == "recorded: --enforce off"
    qos.backend = object()                          # what LinuxBackend stands for here: "can enforce"
    assert isinstance(make_applier("auto", qos), LinuxApplier)
    assert isinstance(make_applier("off", qos), RecordingApplier)
