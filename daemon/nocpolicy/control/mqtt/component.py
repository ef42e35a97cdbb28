"""MqttBridge: commands in, events out, node status, and the fleet (controller or agent role).

Without ``--mqtt`` the component is "disabled" and does nothing. With it, all
broker I/O runs in this component's own tasks: a broker outage leaves DNS
answers and enforcement untouched (the component stays "running"; status and
``nocpolicy_mqtt_connected`` show the link), events wait in a bounded outbox.

Who may run a command: the broker ACL ``pattern write nocpolicy/v1/cmd/%u/#``
makes the identity level of ``cmd/<identity>/<verb>`` equal to the publisher's
MQTT user name; the policy's ``control.grants`` then decide per verb.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, OrderedDict

from ... import __version__
from ...component import Component
from ...control.commands import Args, Command, Invocation
from ...errors import CommandError, NocpolicyError
from .agent import Agent
from .broker import broker_config
from .controller import Controller
from .link import Link
from .metrics import MqttCollector
from .outbox import AGGREGATED, FORWARDED, SINGLE_DETECTIONS, DetectionCounts, Outbox, counts_only
from .qoslink import emergency_state, enforcement_plan, make_applier
from .wire import (
    ACK_FILTER,
    CMD_FILTER,
    NODE_RE,
    STATUS_FILTER,
    BadRequest,
    dumps,
    event_topic,
    parse_command,
    plan_topic,
    reply,
    reply_topic,
    status_topic,
)

log = logging.getLogger(__name__)

MAX_INFLIGHT = 32             # commands running at once; more are answered "busy"
RECENT = 1024                 # request ids remembered: a redelivered command is answered, not re-run
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
        self.command_results: Counter = Counter()
        self._inflight = 0
        self._recent: OrderedDict = OrderedDict()   # (identity, verb, request id) -> reply (None: running)
        self._outbox_wake = asyncio.Event()
        self._events = None
        self._configured = False
        self._started = False
        self._stopping = False
        self._link_task = None

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
        if self.role == "agent":
            subs.append(plan_topic(self.node))
            self.agent = Agent(self.node, store=self.ctx.store, clock=self.ctx.clock,
                               applier=make_applier(self.ctx), publish=self._publish)
        will = (status_topic(self.node), dumps(self._status_doc("offline", "connection lost")))
        self.link = Link(self.cfg, f"nocpolicyd-{self.node}", subscriptions=subs,
                         on_connected=self._on_connected, on_message=self._on_message, will=will)
        self._events = self.ctx.events.subscribe(maxsize=10000)
        self._link_task = self.tasks.spawn("link", self.link.run())
        self.tasks.spawn("events", self._event_pump())
        self.tasks.spawn("outbox", self._outbox_loop())
        self.tasks.spawn("detections", self._detection_loop())
        if self.agent:
            self.tasks.spawn("agent", self.agent.run())
        if self.controller:
            self.tasks.spawn("controller", self.controller.run())
        self._started = True
        self.set_state("running", f"{self.role} {self.node} via {self.cfg.url}")

    async def stop(self) -> None:
        self._stopping = True
        if self.link is not None and self.link.connected.is_set():
            try:   # a clean stop says so; the last will covers crashes
                await asyncio.wait_for(self._publish(status_topic(self.node),
                                                     dumps(self._status_doc("offline", "stopped")),
                                                     retain=True), 2.0)
            except TimeoutError:
                pass
        if self.link is not None:
            self.link.close()
            if self._link_task is not None and not self._link_task.done():
                await asyncio.wait({self._link_task}, timeout=3.0)
        if self._events is not None:
            self.ctx.events.unsubscribe(self._events)
        await super().stop()

    # -- broker callbacks --------------------------------------------------------

    async def _on_connected(self) -> None:
        await self._publish_status()
        self._outbox_wake.set()
        if self.controller:
            self.controller.replan(republish=True)

    def _on_message(self, msg) -> None:
        topic = msg.topic.value
        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload or "").encode()
        if topic.startswith("nocpolicy/v1/cmd/"):
            self._command(topic, payload)
        elif topic == status_topic(self.node):
            if _state_of(payload) == "offline" and not self._stopping:
                self.tasks.spawn("status", self._publish_status())
        elif self.agent and topic == plan_topic(self.node):
            self.agent.offer(payload)
        elif self.controller and topic.endswith("/status"):
            self.controller.on_status(topic, payload)
        elif self.controller and topic.endswith("/ack"):
            self.controller.on_ack(topic, payload, retained=bool(msg.retain))

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        return await self.link.publish(topic, payload, retain=retain) if self.link else False

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

    # -- commands ----------------------------------------------------------------

    def _command(self, topic: str, payload: bytes) -> None:
        if self._inflight >= MAX_INFLIGHT:
            self.command_results["busy"] += 1
            try:
                req = parse_command(topic, payload)
                doc = reply(req.request_id, req.verb, error="busy: too many commands in progress; retry",
                            status=503)
                self.tasks.spawn("reply", self._publish(reply_topic(req.identity, req.request_id), dumps(doc)))
            except BadRequest:
                pass
            return
        self._inflight += 1
        self.tasks.spawn("command", self._run_command(topic, payload))

    async def _run_command(self, topic: str, payload: bytes) -> None:
        try:
            doc, identity, rid = await self._execute(topic, payload)
            await self._publish(reply_topic(identity, rid), dumps(doc))
        finally:
            self._inflight -= 1

    def _seen(self, key: tuple[str, str, str]):
        """(True, reply-or-None) if this request id was already taken; otherwise remember it."""
        if key in self._recent:
            return True, self._recent[key]
        self._recent[key] = None
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        return False, None

    async def _execute(self, topic: str, payload: bytes) -> tuple[dict, str, str]:
        verb = topic.rsplit("/", 1)[-1]
        try:
            req = parse_command(topic, payload)
        except BadRequest as exc:
            self.command_results["invalid"] += 1
            log.warning("mqtt: bad command from %s on %s: %s", exc.identity, topic, exc)
            return reply(exc.request_id, verb, error=str(exc), status=exc.status), exc.identity, exc.request_id
        key = (req.identity, req.verb, req.request_id)
        seen, earlier = self._seen(key)
        if seen:   # QoS 1 may deliver twice, and clients retry: never run one request twice
            log.info("mqtt: %s %s by %s is a repeat; answering without running it", req.verb,
                     req.request_id, req.identity)
            return (earlier or reply(req.request_id, req.verb, error="this request id is still running",
                                     status=409)), req.identity, req.request_id
        doc = await self._dispatch(req)
        self._recent[key] = doc
        return doc, req.identity, req.request_id

    async def _dispatch(self, req) -> dict:
        policy = self.ctx.policy()
        actor = f"mqtt:{req.identity}"
        try:
            result = await self.ctx.commands.dispatch(
                req.verb, req.args, actor=actor, source="mqtt", request_id=req.request_id,
                allowed=lambda cmd: policy.control.allows(req.identity, cmd.name))
        except CommandError as exc:
            kind = "refused" if exc.status in (403, 409) else "invalid"
            self.command_results[kind] += 1
            if exc.status == 403:
                self.ctx.store.audit(actor, "mqtt.refused", f"command:{req.verb}", None,
                                     {"request_id": req.request_id, "reason": str(exc)})
            log.info("mqtt: %s %s by %s refused (%d): %s", req.verb, req.request_id, actor, exc.status, exc)
            return reply(req.request_id, req.verb, error=str(exc), status=exc.status, field=exc.field)
        except Exception as exc:    # a handler bug: answer, log, keep serving
            self.command_results["failed"] += 1
            log.exception("mqtt: %s by %s failed", req.verb, actor)
            return reply(req.request_id, req.verb, error=f"internal error: {exc}", status=500)
        self.command_results["ok"] += 1
        cmd = next((c for c in self.ctx.commands.describe() if c["name"] == req.verb), None)
        if cmd and cmd["mutating"]:
            self.ctx.store.audit(actor, "mqtt.command", f"command:{req.verb}", None,
                                 {"request_id": req.request_id, "args": req.args})
        return reply(req.request_id, req.verb, result=_jsonable(result))

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
            interval = float(getattr(self.ctx.policy().dns, "detections_interval", None) or 60.0)
            await self.ctx.clock.sleep(interval)
            doc = self.detections.flush(self.ctx.clock.now().isoformat(), interval)
            if doc is not None:
                self._emit(event_topic("detections"), {"node": self.node, **doc})

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
        return {"policy": p.version if p else None, "emergency": await emergency_state(self.ctx),
                "enforcement": enforcement_plan(self.ctx)}

    # -- wiring ------------------------------------------------------------------

    def commands(self) -> list[Command]:
        async def fleet_status(args: Args, inv: Invocation) -> dict:
            args.check()
            return self.fleet_status()
        return [Command("fleet.status", fleet_status, "fleet convergence (controller) or this agent's plan",
                        mutating=False)]

    def fleet_status(self) -> dict:
        out = {"role": self.role, "node": self.node, "mqtt": self.link_status()}
        if self.controller:
            out.update(self.controller.status())
        if self.agent:
            out["plan"] = self.agent.applied
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
