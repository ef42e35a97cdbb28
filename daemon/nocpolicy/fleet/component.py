"""MqttBridge: commands in, events out, node status, and the fleet (controller or agent role).

Without ``--mqtt`` the component is "disabled" and does nothing. With it, all
broker I/O runs in this component's own tasks: a broker outage leaves DNS
answers and enforcement untouched (the component stays "running"; status and
``nocpolicy_mqtt_connected`` show the link), events wait in a bounded outbox.

Who may run a command: the broker ACL ``pattern write nocpolicy/v1/cmd/%u/#``
makes the identity level of ``cmd/<identity>/<verb>`` equal to the publisher's
MQTT user name; the policy's ``control.grants`` then decide per verb.

What it needs of other components arrives in app.py (``app.wire``): the qos
component as an ``interfaces.FleetQos`` (``qos``), and the listeners to tell when
the broker link comes (back) up (``add_link_listener``, a
``notices.publisher.NoticeLinkListener``). It is their ``NoticePublisher``.
"""

from __future__ import annotations

import asyncio
import json
import logging

from .. import __version__
from ..component import Component
from ..control.commands import Args, Command, Invocation
from ..errors import Conflict, NocpolicyError
from ..interfaces import DetectionSummary, FleetDecisions, FleetQos, FleetSessions, RuntimeLists
from ..notices.publisher import NoticeLinkListener
from ..policy.fields import as_id
from .agent import Agent
from .broker import broker_config
from .controller import Controller
from .inbox import Inbox
from .kinds import build_kinds
from .link import Link
from .metrics import MqttCollector
from .outbox import AGGREGATED, FORWARDED, SINGLE_DETECTIONS, DetectionCounts, Outbox, counts_only
from .qoslink import emergency_state, enforcement_plan, make_applier
from .stateagent import StateAgent
from .statectl import StatePublisher
from .statewire import STATE_ACK_FILTER, agent_filters, is_state_topic
from .upsessions import UP_SESSIONS_FILTER, SessionsIn, SessionsUp
from .upward import UP_FILTER, FleetDetections, publish_loop
from .wire import (
    ACK_FILTER,
    CMD_FILTER,
    NODE_RE,
    STATUS_FILTER,
    dumps,
    event_topic,
    plan_topic,
    status_topic,
)

log = logging.getLogger(__name__)

OUTBOX_SIZE = 1000


class MqttBridge(Component):
    name = "mqtt"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.cfg = None
        self.node: str | None = None
        self.role = ctx.options.role
        self.link: Link | None = None
        self.agent: Agent | None = None
        self.controller: Controller | None = None
        self.outbox = Outbox(OUTBOX_SIZE)
        self.detections = DetectionCounts()
        self.inbox = Inbox(ctx, publish=self._publish, spawn=self.tasks.spawn)
        self._outbox_wake = asyncio.Event()
        self._events = None
        self._configured = False
        self._started = False
        self._stopping = False
        self._link_task = None
        self.qos: FleetQos | None = None                    # handed in by app.wire
        self.decisions: FleetDecisions | None = None        # handed in by app.wire (subscribers)
        self.lists: RuntimeLists | None = None              # handed in by app.wire (dns)
        self.detection_source: DetectionSummary | None = None  # handed in by app.wire (dns)
        self.fleet_detections: FleetDetections | None = None   # controller: summaries from the agents
        self.sessions: FleetSessions | None = None          # handed in by app.wire (sessions)
        self.sessions_up: SessionsUp | None = None          # agent: session events for the controller
        self.sessions_in: SessionsIn | None = None          # controller: session events from the agents
        self.state_pub: StatePublisher | None = None        # controller: fleet state out
        self.state_agent: StateAgent | None = None          # agent: fleet state in
        self._link_listeners: list[NoticeLinkListener] = []        # handed in by app.wire

    # -- lifecycle ---------------------------------------------------------------

    async def prepare(self, policy, change):
        if not self._configured:
            self.cfg = broker_config(self.ctx.options)        # raises on a bad URL or password file
            if self.cfg is None and self.role in ("agent", "controller"):
                raise NocpolicyError(f"--role {self.role} needs --mqtt (the fleet talks through a broker)")
            node = self.ctx.options.node or policy.settings.node
            if not NODE_RE.match(node or ""):
                raise NocpolicyError(f"--node {node!r}: letters, digits, '.', '_', '-' (one MQTT topic level)")

        def commit():
            if not self._configured:
                self.node = node
                self._configured = True
            if self.controller is not None:
                self.controller.tracker.set_members(policy.control.fleet_nodes)
                if self._started:
                    self.controller.replan()
            if self.state_pub is not None and self._started:
                self.state_pub.members_changed()
        return commit

    async def start(self) -> None:
        if self.cfg is None:
            self.set_state("disabled", "no --mqtt")
            return
        subs = []
        if self.role in ("standalone", "controller"):
            subs.append(CMD_FILTER)
        subs.append(status_topic(self.node))     # to correct a stale "offline" (an old last will)
        if self.role == "controller":
            subs += [STATUS_FILTER, ACK_FILTER]
            self.controller = Controller(self.node, store=self.ctx.store, clock=self.ctx.clock,
                                         publish=self._publish, content=self._plan_content,
                                         members=lambda: self.ctx.policy().control.fleet_nodes)
            self.controller.tracker.set_members(self.ctx.policy().control.fleet_nodes)
            if self.qos is not None:      # caps changed by decisions (a throttle suspension) go out too
                self.qos.on_plan_change(self.controller.replan)
        if self.role == "agent":
            subs.append(plan_topic(self.node))
            self.agent = Agent(self.node, store=self.ctx.store, clock=self.ctx.clock,
                               applier=make_applier(self.ctx.options.enforce, self.qos), publish=self._publish)
        subs += self._fleet_state()
        will = (status_topic(self.node), dumps(self._status_doc("offline", "connection lost")))
        self.link = Link(self.cfg, f"nocpolicyd-{self.node}", subscriptions=subs,
                         on_connected=self._on_connected, on_message=self._on_message, will=will)
        self._events = self.ctx.events.subscribe(maxsize=10000)
        self._link_task = self.tasks.spawn("link", self.link.run())
        self.tasks.supervise("events", self._event_pump)
        self.tasks.supervise("outbox", self._outbox_loop)
        self.tasks.supervise("detections", self._detection_loop)
        self.tasks.supervise("refusal-audit", self._refusal_audit_loop)
        if self.agent:
            self.tasks.supervise("agent", self.agent.run)
        if self.controller:
            self.tasks.supervise("controller", self.controller.run)
        if self.state_pub:
            self.tasks.supervise("state", self.state_pub.run)
        if self.state_agent:
            self.tasks.supervise("state", self.state_agent.run)
        if self.sessions_up:
            self.tasks.supervise("sessions-up", self.sessions_up.run)
        if self.state_agent and self.detection_source is not None:
            self.tasks.supervise("detections-up", lambda: publish_loop(
                self.node, source=self.detection_source, clock=self.ctx.clock, publish=self._publish,
                interval=lambda: float(self.ctx.policy().dns.detections_interval or 60.0)))
        self._started = True
        self.set_state("running", f"{self.role} {self.node} via {self.cfg.url}")

    def _fleet_state(self) -> list[str]:
        """Fleet state (runtime decisions, list entries): the controller publishes it, an agent
        takes it and refuses the commands that would change it locally. The subscriptions."""
        kinds = build_kinds(self.decisions, self.lists)
        if self.role == "controller":
            self.state_pub = StatePublisher(self.node, kinds=kinds, store=self.ctx.store, clock=self.ctx.clock,
                                            publish=self._publish,
                                            members=lambda: self.ctx.policy().control.fleet_nodes,
                                            part_size=lambda: self.ctx.policy().control.state_part_size)
            self.state_pub.attach()
            members = lambda: self.ctx.policy().control.fleet_nodes    # noqa: E731
            self.fleet_detections = FleetDetections(members)
            if self.sessions is not None:
                self.sessions_in = SessionsIn(self.sessions, members)
            return [STATE_ACK_FILTER, UP_FILTER] + ([UP_SESSIONS_FILTER] if self.sessions_in else [])
        if self.role == "agent":
            self.state_agent = agent = StateAgent(self.node, kinds=kinds, store=self.ctx.store,
                                                  clock=self.ctx.clock, publish=self._publish,
                                                  part_wait=lambda: self.ctx.policy().control.state_part_wait)
            for kind in kinds.values():
                for name in kind.commands:
                    self.ctx.commands.refuse(name, lambda what=kind.what: agent.refusal(what.capitalize()))
            if self.sessions is not None:
                self.sessions_up = SessionsUp(self.node, publish=self._publish, connected=lambda: self.connected,
                                              live=self.sessions.live_sessions, store=self.ctx.store)
                self.sessions.add_change_listener(self.sessions_up.changed)
            return agent_filters(self.node)
        return []

    async def stop(self) -> None:
        self._stopping = True
        if self.link is not None and self.link.connected.is_set():
            try:   # a clean stop says so; the last will covers crashes
                await asyncio.wait_for(self._publish(status_topic(self.node),
                                                     dumps(self._status_doc("offline", "stopped")),
                                                     retain=True), 2.0)
            except TimeoutError:
                pass
        if self.sessions_up is not None:
            try:
                self.sessions_up.save()       # stops not yet sent survive the restart
            except Exception:
                log.exception("mqtt: keeping the unsent session stops failed")
        if self.link is not None:
            self.link.close()
            if self._link_task is not None and not self._link_task.done():
                await asyncio.wait({self._link_task}, timeout=3.0)
        if self._events is not None:
            self.ctx.events.unsubscribe(self._events)
        await super().stop()
        self.inbox.flush_audit(everything=True)

    # -- broker callbacks --------------------------------------------------------

    async def _on_connected(self) -> None:
        await self._publish_status()
        self._outbox_wake.set()
        for listener in self._link_listeners:   # notices waiting for the link are due now
            try:
                listener.mqtt_connected()
            except Exception:   # another component's bug must not stop the replan below
                log.exception("mqtt: link listener %r failed", listener)
        if self.controller:
            self.controller.replan(republish=True)
        if self.state_pub:
            self.state_pub.republish()
        if self.sessions_up:
            self.sessions_up.resync()

    def _on_message(self, msg) -> None:
        topic = msg.topic.value
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
        if topic.startswith("nocpolicy/v1/cmd/"):
            self.inbox.accept(topic, payload, retained=bool(msg.retain))
        elif topic == status_topic(self.node):
            if _state_of(payload) == "offline" and not self._stopping:
                self.tasks.spawn("status", self._publish_status())
        elif self.state_agent and is_state_topic(topic):
            self.state_agent.offer(topic, payload, bool(msg.retain))
        elif self.sessions_in and topic.endswith("/up/sessions"):
            self.sessions_in.on_message(topic, payload)
        elif self.fleet_detections and topic.endswith("/up/detections"):
            self.fleet_detections.on_message(topic, payload)
        elif self.state_pub and topic.endswith("/state/ack"):
            self.state_pub.on_ack(topic, payload, retained=bool(msg.retain))
        elif self.agent and topic == plan_topic(self.node):
            self.agent.offer(payload)
        elif self.controller and topic.endswith("/status"):
            self.controller.on_status(topic, payload)
        elif self.controller and topic.endswith("/ack"):
            self.controller.on_ack(topic, payload, retained=bool(msg.retain))

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        return await self.link.publish(topic, payload, retain=retain) if self.link else False

    def add_link_listener(self, listener: NoticeLinkListener) -> None:
        """Call ``listener.mqtt_connected()`` each time the broker link comes (back) up."""
        self._link_listeners.append(listener)

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected.is_set()

    def notice_link_problem(self) -> str:
        """Why a notice cannot be published now ("" when it can)."""
        if self.cfg is None:
            return "MQTT bridge disabled (nocpolicyd runs without --mqtt)"
        if not self.connected:
            why = self.link.last_error if self.link and self.link.last_error else "connecting"
            return f"not connected to the broker {self.cfg.url} ({why})"
        return ""

    async def publish_notice(self, topic: str, payload: bytes) -> tuple[bool, str]:
        """Publish a maintenance notice to a contact's topic: QoS 1, not retained.

        True only once the broker acknowledged it (PUBACK); else False and the reason.
        """
        problem = self.notice_link_problem()
        if problem:
            return False, problem
        if await self.link.publish(topic, payload, qos=1, retain=False):
            return True, ""
        return False, f"publish to the broker {self.cfg.url} not acknowledged ({self.link.last_error})"

    # -- status ------------------------------------------------------------------

    def _status_doc(self, state: str, reason: str = "") -> dict:
        p = self.ctx.policy()
        doc = {"state": state, "node": self.node, "role": self.role, "version": __version__,
               "policy": p.version if p else None, "at": self.ctx.clock.now().isoformat()}
        if reason:
            doc["reason"] = reason
        return doc

    async def _publish_status(self) -> None:
        await self._publish(status_topic(self.node), dumps(self._status_doc("online")), retain=True)

    # -- events out --------------------------------------------------------------

    def _emit(self, topic: str, doc: dict) -> None:
        self.outbox.put(topic, dumps(doc))
        self._outbox_wake.set()

    async def _event_pump(self) -> None:
        while True:
            ev = await self._events.get()
            if ev.kind in SINGLE_DETECTIONS:
                self.detections.add(ev.payload, ev.ts)
                continue
            if ev.kind == AGGREGATED:
                self._emit(event_topic(AGGREGATED), {"node": self.node, "ts": ev.ts, **counts_only(ev.payload)})
                continue
            if ev.kind in FORWARDED:
                self._emit(event_topic(ev.kind), {"node": self.node, "ts": ev.ts, **_jsonable(ev.payload)})
            if ev.kind == "reload" and ev.payload.get("ok") and self.link and self.link.connected.is_set():
                self.tasks.spawn("status", self._publish_status())      # the policy hash changed
            if self.controller and ev.kind in ("emergency", "reload"):
                self.controller.replan()
            if self.agent and ev.kind == "reload" and ev.payload.get("ok"):
                self.agent.reapply()     # the fleet plan takes precedence over the local one

    async def _detection_loop(self) -> None:
        while True:
            interval = float(self.ctx.policy().dns.detections_interval or 60.0)
            await self.ctx.clock.sleep(interval)
            doc = self.detections.flush(self.ctx.clock.now().isoformat(), interval)
            if doc is not None:
                self._emit(event_topic("detections"), {"node": self.node, **doc})

    async def _refusal_audit_loop(self) -> None:
        while True:
            await self.ctx.clock.sleep(60.0)
            self.inbox.flush_audit()

    async def _outbox_loop(self) -> None:
        while True:
            item = self.outbox.peek()
            if item is None or not self.link.connected.is_set():
                self._outbox_wake.clear()
                await self._outbox_wake.wait()
                continue
            if await self._publish(item[0], item[1]):
                self.outbox.pop()
            else:
                await asyncio.sleep(0.5)

    # -- fleet -------------------------------------------------------------------

    async def _plan_content(self) -> dict:
        p = self.ctx.policy()
        return {"policy": p.version if p else None, "emergency": emergency_state(self.qos),
                "enforcement": enforcement_plan(self.qos)}

    # -- wiring ------------------------------------------------------------------

    def commands(self) -> list[Command]:
        async def fleet_status(args: Args, inv: Invocation) -> dict:
            args.check()
            return self.fleet_status()
        async def fleet_detections(args: Args, inv: Invocation) -> dict:
            customer = args.get("customer", as_id, None)
            node = args.get("node", as_id, None)
            args.check()
            if self.fleet_detections is None:
                raise Conflict("detections of the fleet are kept by the fleet controller "
                               "(nocpolicyd --role controller); this node is " + str(self.role))
            return self.fleet_detections.answer(customer, node)
        return [Command("fleet.status", fleet_status, "fleet convergence (controller) or this agent's plan",
                        mutating=False),
                Command("fleet.detections", fleet_detections, "detection counts of every fleet node "
                        "(controller): per list, class, customer and node", mutating=False)]

    def fleet_status(self) -> dict:
        out = {"role": self.role, "node": self.node, "mqtt": self.link_status()}
        if self.controller:
            out.update(self.controller.status())
        if self.agent:
            out["plan"] = self.agent.applied
        if self.state_pub:
            nodes = self.controller.tracker.nodes if self.controller else {}
            out["state"] = self.state_pub.status(lambda n: nodes[n].online if n in nodes else None)
        if self.state_agent:
            out["state"] = self.state_agent.status()
        return out

    def link_status(self) -> dict:
        if self.cfg is None:
            return {"enabled": False}
        link = self.link
        return {"enabled": True, "broker": self.cfg.url,
                "connected": bool(link and link.connected.is_set()),
                "connects": link.connects if link else 0, "last_error": link.last_error if link else "",
                "outbox": len(self.outbox), "events_dropped": self.outbox.dropped}

    def collectors(self) -> list:
        return [MqttCollector(self)]

    def status(self) -> dict:
        st = super().status()
        st["mqtt"] = self.link_status()
        if self.cfg is not None and self.state == "running":
            st["detail"] = (f"{self.role} {self.node} "
                            f"{'connected to' if st['mqtt']['connected'] else 'NOT connected to'} {self.cfg.url}"
                            + ("" if st["mqtt"]["connected"] or not st["mqtt"]["last_error"]
                               else f": {st['mqtt']['last_error']}"))
        return st


def _state_of(payload: bytes):
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc.get("state") if isinstance(doc, dict) else None


def _jsonable(obj):
    """Round-trip through JSON (datetimes etc. become strings) so replies never fail to encode."""
    return json.loads(json.dumps(obj, default=str))
