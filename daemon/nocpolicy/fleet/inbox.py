"""Commands in: parse, authorise by identity, run once, answer (the MQTT side of the command registry).

The identity is the ``<identity>`` level of ``nocpolicy/v1/cmd/<identity>/<verb>``,
which the broker ACL (``pattern write nocpolicy/v1/cmd/%u/#``) makes equal to the
publisher's user name; ``control.grants`` decide per verb. Each request id is
run at most once: QoS 1 may redeliver and clients retry, so a repeat gets the
first answer.

Before anything runs (fleet/intake.py): a *retained* command is never executed (it
would run again on every reconnect; logged, counted, answered 400); a payload
larger than its verb's limit is refused unread (413); an identity beyond its rate
is refused (429); large payloads are parsed in a thread. Refusals reach the audit
aggregated per identity, verb and reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, OrderedDict

from ..errors import CommandError, NocpolicyError
from . import intake
from .wire import NO_ID, BadRequest, dumps, parse_command, reply, reply_topic

log = logging.getLogger(__name__)

MAX_INFLIGHT = 32             # commands running at once; more are answered "busy"
RECENT = 1024                 # request ids remembered: a redelivered command is answered, not re-run
AUDIT_ARGS_MAX = 4096         # larger arguments (e.g. a feed's 10k entries) are audited as a summary


class Inbox:
    def __init__(self, ctx, *, publish, spawn):
        self.ctx = ctx
        self._publish, self._spawn = publish, spawn
        self.results: Counter = Counter()   # ok, refused, invalid, failed, busy, retained, too_large, rate_limited
        self._inflight = 0
        self._recent: OrderedDict = OrderedDict()   # (identity, verb, request id) -> reply (None: running)
        self.rate = intake.RateLimit()
        self.refusals = intake.RefusalAudit()

    def accept(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Called for each message on cmd/+/+; the work runs in its own task."""
        if self._screen(topic, payload, retained):
            return
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

    def _screen(self, topic: str, payload: bytes, retained: bool) -> bool:
        """True if the message was refused before parsing (and answered when it can be)."""
        identity, verb = (topic.split("/") + ["", "", "", "", ""])[3:5]
        if retained:
            why, status, kind = ("a retained command is never executed (it would run again on every "
                                 "reconnect): publish commands without the retain flag, and clear this one "
                                 "with an empty retained message"), 400, "retained"
            log.warning("mqtt: retained command %s by %s not executed", verb, identity)
        elif len(payload) > intake.max_bytes(verb):
            why, status, kind = (f"payload of {len(payload)} bytes exceeds {intake.max_bytes(verb)} "
                                 f"for {verb}"), 413, "too_large"
        elif not self.rate.allow(identity, self.ctx.clock.monotonic()):
            why, status, kind = (f"more than {intake.RATE:g} commands per second (burst {intake.BURST}) "
                                 f"from {identity}; slow down"), 429, "rate_limited"
        else:
            return False
        self.results[kind] += 1
        self._audit_refusal(identity, verb, kind, {"status": status})
        rid = NO_ID if status == 413 else _request_id(payload)
        doc = reply(rid, verb, error=why, status=status)
        self._spawn("reply", self._publish(reply_topic(identity, rid), dumps(doc)))
        return True

    def _audit_refusal(self, identity: str, verb: str, reason: str, detail: dict) -> None:
        for action, subject, after in self.refusals.refused(identity, verb, reason, detail,
                                                            self.ctx.clock.monotonic()):
            self._write_audit(action, subject, identity, after)

    def flush_audit(self, *, everything: bool = False) -> None:
        """Write the summaries of refusal windows that are over (all of them at stop)."""
        now = None if everything else self.ctx.clock.monotonic()
        for action, subject, after in self.refusals.flush(now):
            self._write_audit(action, subject, after["identity"], after)

    def _write_audit(self, action: str, subject: str, identity: str, after: dict) -> None:
        try:
            self.ctx.store.audit(f"mqtt:{identity}", action, subject, None, after)
        except NocpolicyError as exc:
            log.error("mqtt: cannot audit a refused command: %s", exc)

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
            if len(payload) > intake.PARSE_OFF_LOOP:
                req = await asyncio.to_thread(parse_command, topic, payload)
            else:
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
                self._audit_refusal(req.identity, req.verb, "not granted",
                                    {"request_id": req.request_id, "error": str(exc)})
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


def _request_id(payload: bytes) -> str:
    """The request id of a small payload refused before parsing, to answer on its topic."""
    try:
        rid = json.loads(payload).get("request_id")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return NO_ID
    return rid if isinstance(rid, str) and 0 < len(rid) <= 64 and "/" not in rid and "+" not in rid \
        and "#" not in rid else NO_ID


def _audit_args(args: dict):
    text = json.dumps(args, ensure_ascii=False, default=str)
    if len(text) <= AUDIT_ARGS_MAX:
        return args
    return {"summary": f"{len(text)} bytes", "keys": sorted(args),
            "sizes": {k: len(v) for k, v in args.items() if isinstance(v, (list, dict))}}


def _jsonable(obj):
    """Round-trip through JSON (datetimes etc. become strings) so replies never fail to encode."""
    return json.loads(json.dumps(obj, default=str))
