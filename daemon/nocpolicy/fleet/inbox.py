"""Commands in: parse, authorise by identity, run once, answer (the MQTT side of the command registry).

The identity is the ``<identity>`` level of ``nocpolicy/v1/cmd/<identity>/<verb>``,
which the broker ACL (``pattern write nocpolicy/v1/cmd/%u/#``) makes equal to the
publisher's user name; ``control.grants`` decide per verb. Each request id is
run at most once: QoS 1 may redeliver and clients retry, so a repeat gets the
first answer.
"""

from __future__ import annotations

import json
import logging
from collections import Counter, OrderedDict

from ..errors import CommandError
from .wire import BadRequest, dumps, parse_command, reply, reply_topic

log = logging.getLogger(__name__)

MAX_INFLIGHT = 32             # commands running at once; more are answered "busy"
RECENT = 1024                 # request ids remembered: a redelivered command is answered, not re-run
AUDIT_ARGS_MAX = 4096         # larger arguments (e.g. a feed's 10k entries) are audited as a summary


class Inbox:
    def __init__(self, ctx, *, publish, spawn):
        self.ctx = ctx
        self._publish, self._spawn = publish, spawn
        self.results: Counter = Counter()       # ok, refused, invalid, failed, busy
        self._inflight = 0
        self._recent: OrderedDict = OrderedDict()   # (identity, verb, request id) -> reply (None: running)

    def accept(self, topic: str, payload: bytes) -> None:
        """Called for each message on cmd/+/+; the work runs in its own task."""
        if self._inflight >= MAX_INFLIGHT:
            self.results["busy"] += 1
            try:
                req = parse_command(topic, payload)
            except BadRequest:
                return
            doc = reply(req.request_id, req.verb, error="busy: too many commands in progress; retry",
                        status=503)
            self._spawn("reply", self._publish(reply_topic(req.identity, req.request_id), dumps(doc)))
            return
        self._inflight += 1
        self._spawn("command", self._run(topic, payload))

    async def _run(self, topic: str, payload: bytes) -> None:
        try:
            doc, identity, rid = await self.execute(topic, payload)
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

    async def execute(self, topic: str, payload: bytes) -> tuple[dict, str, str]:
        """(reply, identity, request id) for one command message."""
        verb = topic.rsplit("/", 1)[-1]
        try:
            req = parse_command(topic, payload)
        except BadRequest as exc:
            self.results["invalid"] += 1
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
            self.results[kind] += 1
            if exc.status == 403:
                self.ctx.store.audit(actor, "mqtt.refused", f"command:{req.verb}", None,
                                     {"request_id": req.request_id, "reason": str(exc)})
            log.info("mqtt: %s %s by %s refused (%d): %s", req.verb, req.request_id, actor, exc.status, exc)
            return reply(req.request_id, req.verb, error=str(exc), status=exc.status, field=exc.field)
        except Exception as exc:    # a handler bug: answer, log, keep serving
            self.results["failed"] += 1
            log.exception("mqtt: %s by %s failed", req.verb, actor)
            return reply(req.request_id, req.verb, error=f"internal error: {exc}", status=500)
        self.results["ok"] += 1
        cmd = next((c for c in self.ctx.commands.describe() if c["name"] == req.verb), None)
        if cmd and cmd["mutating"]:
            self.ctx.store.audit(actor, "mqtt.command", f"command:{req.verb}", None,
                                 {"request_id": req.request_id, "args": _audit_args(req.args)})
        return reply(req.request_id, req.verb, result=_jsonable(result))


def _audit_args(args: dict):
    text = json.dumps(args, ensure_ascii=False, default=str)
    if len(text) <= AUDIT_ARGS_MAX:
        return args
    return {"summary": f"{len(text)} bytes", "keys": sorted(args),
            "sizes": {k: len(v) for k, v in args.items() if isinstance(v, (list, dict))}}


def _jsonable(obj):
    """Round-trip through JSON (datetimes etc. become strings) so replies never fail to encode."""
    return json.loads(json.dumps(obj, default=str))
