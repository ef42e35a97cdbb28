"""Detector: passive C&C detection where nocpolicy is not the resolver (Art. 45(4)).

Inputs (``detect:`` policy section): dnstap over a Frame Streams unix socket,
live capture on interfaces (scapy, loaded only when configured), and followed
query-log files. Each lookup gets the DNS guard's verdict (same lists, classes,
opt-out and allowlist) and a block goes to the guard's detection log with its
source. Enforcement per policy (``enforce``): ``rpz`` (zones + unbound ACL
include, reload the resolver), ``nft`` (customer prefix . C&C address with
timeouts in ``table inet nocpolicy_detect``), ``events`` (aggregated counts).

On stop the sources close; the RPZ files and the nft table stay (their blocks
expire by themselves: RPZ entries are dropped ``block_for`` after the last
lookup by the next nocpolicyd run, nft elements carry kernel timeouts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..component import Component
from ..control.commands import Command
from ..errors import EnforcementError, NocpolicyError
from ..policy.detect import DetectSettings
from ..policy.fields import as_bool
from . import nft
from .blocks import ActiveBlocks, AddrBlock, NameBlock, entry_kind
from .capture import LiveCapture  # imports scapy only when a capture starts
from .guard import GuardAdapter
from .logsource import LogSource
from .message import MessageError, answer_addresses, question
from .observation import SOURCES, Observation
from .pipeline import Pipeline
from .publish import RpzPublisher
from .tapserver import TapServer
from .trust import Trust, build_trust, local_addresses

log = logging.getLogger(__name__)

MIGRATIONS = (
    """
    CREATE TABLE detect_blocks (
        kind     TEXT NOT NULL,          -- name | addr
        k1       TEXT NOT NULL,          -- class | customer
        k2       TEXT NOT NULL,          -- entry | address
        data     TEXT NOT NULL,          -- JSON of the block
        expires  REAL NOT NULL,
        PRIMARY KEY (kind, k1, k2)
    );
    """,
)
HOUSEKEEPING_EVERY = 1.0
PUBLISH_DEBOUNCE = 0.05
NOT_BLOCKABLE = ("0.0.0.0", "::")


class Detector(Component):
    name = "detect"

    def __init__(self, ctx):
        super().__init__(ctx)
        ctx.store.migrate("detect", MIGRATIONS)
        self.settings = DetectSettings()
        self.policy = None
        self.guard = GuardAdapter()            # connected to the DNS guard in app.py
        self.blocks = ActiveBlocks()
        self.pipeline = Pipeline(self.guard, self._on_block)
        self.tap: TapServer | None = None
        self.captures: list = []
        self.logs: list[LogSource] = []
        self.rpz: RpzPublisher | None = None
        self.trust = Trust(frozenset(), frozenset())
        self.refused_addrs = 0                # answer addresses never blocked (see detect/trust.py)
        self._wake = asyncio.Event()
        self._rpz_dirty = False
        self._nft_full = False
        self._nft_pending: list[AddrBlock] = []
        self._optouts: frozenset[str] = frozenset()
        self._view = ctx.subscribers.view
        self._event_base: dict[tuple[str, str, str], int] = {}
        self._log_tasks: list[asyncio.Task] = []
        self._saved: dict[tuple[str, str], float] = {}     # name block -> expiry last written to the store
        self._last_event = 0.0
        self.failures = {"rpz": 0, "nft": 0}
        self.last_error = {"rpz": "", "nft": ""}
        self._started = False
        ctx.subscribers.watch(self._subscribers_changed)     # opt-outs are pushed, never polled

    # -- lifecycle -------------------------------------------------------------------

    async def prepare(self, policy, change):
        s = policy.detect
        if "nft" in s.enforce and shutil.which(s.nft.command[0]) is None:
            raise NocpolicyError(f"detect.nft.command: {s.nft.command[0]!r} not found "
                                 "(install nftables or remove nft from detect.enforce)")
        if "rpz" in s.enforce and s.rpz.views == "tags" and not s.rpz.reload_config:
            raise NocpolicyError("detect.rpz.reload_config is needed with views: tags")
        for cap in s.captures:
            if not _interface_exists(cap.interface):
                raise NocpolicyError(f"{cap.loc}: detect.capture: interface {cap.interface!r} does not exist")
        trust = build_trust(policy, await asyncio.to_thread(local_addresses) if s.enabled else frozenset())

        def commit():
            old = self.settings
            self.settings, self.policy, self.trust = s, policy, trust
            if self._started:
                if old != s:
                    self.tasks.spawn("reconfigure", self._reconfigure(old))
                elif change.touches("customers"):
                    self._nft_full = self._rpz_dirty = True
                    self._wake.set()
        return commit

    async def start(self) -> None:
        await asyncio.to_thread(self._load_blocks)
        self.tasks.supervise("publisher", self._publisher)
        self.tasks.supervise("housekeeping", self._housekeeping)
        self._started = True
        await self._start_inputs()

    async def stop(self) -> None:
        await self._stop_inputs()
        await super().stop()

    async def _reconfigure(self, old: DetectSettings) -> None:
        await self._stop_inputs()
        if "nft" in old.enforce and "nft" not in self.settings.enforce:
            try:
                await nft.apply(old.nft.command, nft.delete_script(old.nft.table))
            except EnforcementError as exc:
                log.error("detect: removing the nft table failed: %s", exc)
        await self._start_inputs()

    async def _start_inputs(self) -> None:
        s = self.settings
        self.rpz = RpzPublisher(s.rpz, self.ctx.options.state_dir) if "rpz" in s.enforce else None
        self._rpz_dirty = "rpz" in s.enforce
        self._nft_full = "nft" in s.enforce
        self._wake.set()
        if not s.enabled:
            self.set_state("disabled", "no detect inputs in the policy (dnstap, capture, logfiles)")
            return
        problems = []
        if not self.guard.available():
            problems.append("the DNS guard is not available")
        if s.dnstap_socket and not problems:
            self.tap = TapServer(s.dnstap_socket, self.pipeline.observe, convert=tap_observation)
            try:
                await self.tap.start()
            except NocpolicyError as exc:
                problems.append(str(exc))
                self.tap = None
        for cap in s.captures if not problems else ():
            c = LiveCapture(cap.interface, cap.port, self.pipeline.observe_many,
                            resolver=lambda a: self.trust.resolver(a))
            try:
                c.start(asyncio.get_running_loop())
                self.captures.append(c)
            except NocpolicyError as exc:
                problems.append(str(exc))
        for lf in s.logfiles if not problems else ():
            src = LogSource(lf.path, lf.format, self.pipeline.observe_many)
            self.logs.append(src)
            self._log_tasks.append(self.tasks.spawn(f"logfile:{lf.path}", src.run()))
        if problems:
            self.set_state("failed", "; ".join(problems))
            log.error("detect: %s", "; ".join(problems))
        else:
            self.set_state("running", self._describe_inputs())

    async def _stop_inputs(self) -> None:
        if self.tap is not None:
            await self.tap.stop()
            self.tap = None
        for c in self.captures:
            await asyncio.to_thread(c.stop)
        self.captures = []
        for t in self._log_tasks:
            t.cancel()
        if self._log_tasks:
            await asyncio.wait(self._log_tasks, timeout=2)
        self._log_tasks, self.logs = [], []

    def _describe_inputs(self) -> str:
        s = self.settings
        parts = []
        if s.dnstap_socket:
            parts.append(f"dnstap {s.dnstap_socket}")
        parts += [f"capture {c.interface}:{c.port}" for c in s.captures]
        parts += [f"{lf.format} log {lf.path}" for lf in s.logfiles]
        return ", ".join(parts) + f"; enforce: {', '.join(s.enforce) or 'none'}"

    # -- inputs ----------------------------------------------------------------------

    # -- detections ------------------------------------------------------------------

    def _on_block(self, v, obs: Observation) -> None:
        s = self.settings
        now = self.ctx.clock.now().timestamp()
        expires = now + s.block_for
        if "rpz" in s.enforce and v.cls in ("mandatory", "security") and v.entry:
            bl = self.policy.lists_by_id.get(v.list) if self.policy else None
            kind, _ = entry_kind(v.entry, bl.format if bl else None)
            nb = NameBlock(v.entry, kind, v.cls, v.list, v.action, v.sinkhole_a, v.sinkhole_aaaa, expires)
            if self.blocks.add_name(nb):
                self._persist("name", nb.cls, nb.entry, nb)
                self._rpz_dirty = True
                self._wake.set()
            elif expires - self._saved.get(nb.key, 0.0) > s.block_for / 10:
                self._persist("name", nb.cls, nb.entry, self.blocks.names[nb.key])   # a longer life
        if "nft" in s.enforce and obs.response and obs.wire and v.customer:
            addrs, _ = answer_addresses(obs.wire)
            for a in addrs:
                if a in NOT_BLOCKABLE or a in (v.sinkhole_a, v.sinkhole_aaaa) or not self.trust.blockable(a):
                    self.refused_addrs += 1
                    continue
                ab = AddrBlock(v.customer, a, v.cls, v.list, expires)
                if self.blocks.add_addr(ab, s.block_for):
                    self._persist("addr", ab.customer, ab.address, ab)
                    self._nft_pending.append(ab)
                    self._wake.set()

    def _persist(self, kind: str, k1: str, k2: str, block) -> None:
        data = {f: getattr(block, f) for f in block.__slots__}
        if kind == "name":
            self._saved[(k1, k2)] = block.expires
        self.ctx.store.execute("INSERT OR REPLACE INTO detect_blocks VALUES (?,?,?,?,?)",
                               (kind, k1, k2, json.dumps(data), block.expires))

    def _load_blocks(self) -> None:
        now = self.ctx.clock.now().timestamp()
        self.ctx.store.execute("DELETE FROM detect_blocks WHERE expires <= ?", (now,))
        for row in self.ctx.store.all("SELECT kind, data FROM detect_blocks"):
            data = json.loads(row["data"])
            if row["kind"] == "name":
                self.blocks.names[(data["cls"], data["entry"])] = NameBlock(**data)
                self._saved[(data["cls"], data["entry"])] = data["expires"]
            else:
                self.blocks.addrs[(data["customer"], data["address"])] = AddrBlock(**data)

    # -- enforcement -----------------------------------------------------------------

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(PUBLISH_DEBOUNCE)
            self._wake.clear()
            await self.publish_now()

    async def publish_now(self) -> None:
        s = self.settings
        if "nft" in s.enforce and (self._nft_full or self._nft_pending):
            await self._publish_nft(s)
        if self._rpz_dirty and self.rpz is not None and self.policy is not None:
            self._rpz_dirty = False
            try:
                res = await self.rpz.publish(list(self.blocks.names.values()), self.policy.customers,
                                             set(self._optouts))
                if res["commands"]:
                    log.info("detect: RPZ published (%s)", ", ".join(res["zones"]) or "ACL include")
                self.last_error["rpz"] = ""
            except EnforcementError as exc:
                self.failures["rpz"] += 1
                self.last_error["rpz"] = str(exc)
                log.error("detect: RPZ: %s", exc)

    async def _publish_nft(self, s: DetectSettings) -> None:
        now = self.ctx.clock.now().timestamp()
        full, pending = self._nft_full, self._nft_pending
        self._nft_full, self._nft_pending = False, []
        blocks = list(self.blocks.addrs.values()) if full else pending
        v4, v6 = nft.elements(blocks, self._prefixes_of, now)
        script = (nft.table_script(s.nft.table, s.nft.hook, v4, v6) if full
                  else nft.add_script(s.nft.table, v4, v6))
        try:
            await nft.apply(s.nft.command, script)
            self.last_error["nft"] = ""
        except EnforcementError as exc:
            self.failures["nft"] += 1
            self.last_error["nft"] = str(exc)
            self._nft_full = True          # next time: render the whole table again
            log.error("detect: nft: %s", exc)

    def _prefixes_of(self, customer: str):
        sub = self._view.get(customer)
        return sub.prefixes if sub else ()

    def _subscribers_changed(self, view, change) -> None:
        """A new subscriber view: a customer who just opted out loses their security address
        blocks at once, and the RPZ ACL is rewritten."""
        self._view = view
        optouts = view.optouts
        if optouts == self._optouts:
            return
        newly = set(optouts - self._optouts)
        self._optouts = optouts
        gone = self.blocks.drop_customer_security(newly)
        for b in gone:
            self.ctx.store.execute("DELETE FROM detect_blocks WHERE kind='addr' AND k1=? AND k2=?",
                                   (b.customer, b.address))
        self._nft_full = bool(gone) or self._nft_full
        self._rpz_dirty = True
        self._wake.set()

    async def _housekeeping(self) -> None:
        while True:
            await self.ctx.clock.sleep(HOUSEKEEPING_EVERY)
            self.housekeeping()

    def housekeeping(self) -> None:
        now = self.ctx.clock.now().timestamp()
        names, addrs = self.blocks.expire(now)
        for b in names:
            self._saved.pop(b.key, None)
            self.ctx.store.execute("DELETE FROM detect_blocks WHERE kind='name' AND k1=? AND k2=?", b.key)
        for b in addrs:
            self.ctx.store.execute("DELETE FROM detect_blocks WHERE kind='addr' AND k1=? AND k2=?", b.key)
        if names:
            self._rpz_dirty = True
            self._wake.set()
        s = self.settings
        if "events" in s.enforce and now - self._last_event >= s.events_interval:
            current = dict(self.pipeline.detected)
            counts = {k: n - self._event_base.get(k, 0) for k, n in current.items()
                      if n > self._event_base.get(k, 0)}
            self._event_base = current
            self._last_event = now
            if not counts:
                return
            self.ctx.events.publish("detections", {
                "interval_s": s.events_interval,
                "counts": [{"source": src, "list": lst, "class": cls, "count": n}
                           for (src, lst, cls), n in sorted(counts.items())],
                "total": sum(counts.values()),
            })

    # -- status, metrics, commands ---------------------------------------------------

    def input_stats(self) -> dict:
        out: dict = {"observed": dict(self.pipeline.observed), "unpaired_responses": self.pipeline.unpaired,
                     "never_blocked_addresses": self.refused_addrs}
        if self.tap is not None:
            t = self.tap
            out["dnstap"] = {"socket": t.path, "connections": t.connections, "frames": t.frames,
                             "ignored": t.ignored, "errors": t.errors}
        out["capture"] = [{"interface": c.interface, "frames": c.frames, "observed": c.observed,
                           "foreign_responses": c.foreign, "kernel_drops": c.kernel_drops}
                          for c in self.captures]
        out["logfiles"] = [src.stats() for src in self.logs]
        return out

    def status(self) -> dict:
        out = super().status()
        out["blocks"] = {"names": len(self.blocks.names), "addresses": len(self.blocks.addrs)}
        out["inputs"] = self.input_stats()
        out["publish_failures"] = dict(self.failures)
        errs = {k: v for k, v in self.last_error.items() if v}
        if errs:
            out["last_errors"] = errs
        return out

    def collectors(self) -> list:
        return [DetectCollector(self)]

    def commands(self) -> list[Command]:
        return [Command("detect.status", self._cmd_status,
                        "passive detection: inputs, active blocks, publication errors", mutating=False)]

    async def _cmd_status(self, args, inv) -> dict:
        show = args.get("blocks", as_bool, False)
        args.check()
        out = self.status()
        out["enforce"] = list(self.settings.enforce)
        out["block_for_s"] = self.settings.block_for
        if self.rpz is not None:
            out["rpz_directory"] = str(self.rpz.directory)
        if show:
            out["names"] = [{"entry": b.entry, "kind": b.kind, "class": b.cls, "list": b.list,
                             "expires": b.expires} for b in sorted(self.blocks.names.values(),
                                                                   key=lambda b: b.entry)]
            out["addresses"] = [{"customer": b.customer, "address": b.address, "class": b.cls,
                                 "list": b.list, "expires": b.expires}
                                for b in sorted(self.blocks.addrs.values(), key=lambda b: b.key)]
        return out


class DetectCollector:
    """Detection metrics, computed at scrape time from plain integers."""

    def __init__(self, det: Detector):
        self.det = det

    def describe(self):
        return []

    def collect(self):
        d = self.det
        total = CounterMetricFamily("nocpolicy_detections", "Blocked lookups detected, by source "
                                    "(guard: answered by the DNS guard; dnstap, capture, logfile: passive)",
                                    labels=["source", "list", "class"])
        for (lst, cls), n in sorted(d.guard.guard_blocked().items()):
            total.add_metric(["guard", lst, cls], n)
        for (src, lst, cls), n in sorted(d.pipeline.detected.items()):
            total.add_metric([src, lst, cls], n)
        yield total
        obs = CounterMetricFamily("nocpolicy_detect_observed", "Lookups observed by passive detection",
                                  labels=["source"])
        for src in SOURCES:
            obs.add_metric([src], d.pipeline.observed.get(src, 0))
        yield obs
        blocks = GaugeMetricFamily("nocpolicy_detect_active_blocks", "Active blocks from passive detection "
                                   "(name: in the RPZ; address: in nftables)", labels=["kind"])
        blocks.add_metric(["name"], len(d.blocks.names))
        blocks.add_metric(["address"], len(d.blocks.addrs))
        yield blocks
        fail = CounterMetricFamily("nocpolicy_detect_publish_failures", "RPZ or nftables publications "
                                   "that failed", labels=["target"])
        for k, n in sorted(d.failures.items()):
            fail.add_metric([k], n)
        yield fail
        errors = CounterMetricFamily("nocpolicy_detect_input_errors", "Malformed dnstap frames or "
                                     "Frame Streams violations, unparsed log lines", labels=["source"])
        errors.add_metric(["dnstap"], d.tap.errors if d.tap else 0)
        errors.add_metric(["logfile"], sum(s.unparsed for s in d.logs))
        yield errors
        conns = GaugeMetricFamily("nocpolicy_detect_dnstap_connections", "Resolvers connected to the "
                                  "dnstap socket")
        conns.add_metric([], d.tap.connections if d.tap else 0)
        yield conns
        drops = CounterMetricFamily("nocpolicy_detect_capture_kernel_drops", "Frames the kernel dropped "
                                    "because capture did not keep up")
        drops.add_metric([], sum(c.kernel_drops for c in d.captures))
        yield drops
        refused = CounterMetricFamily("nocpolicy_detect_refused", "Passive inputs not believed or not acted "
                                      "on: responses from an address that is not a resolver (foreign), "
                                      "responses that pair with no query seen (unpaired), answer addresses "
                                      "that are never blocked (never_block)", labels=["reason"])
        refused.add_metric(["foreign"], sum(c.foreign for c in d.captures))
        refused.add_metric(["unpaired"], d.pipeline.unpaired)
        refused.add_metric(["never_block"], d.refused_addrs)
        yield refused


def tap_observation(msg) -> Observation | None:
    """A dnstap client query/response as an observation (pure: runs in the tap's parser thread)."""
    wire = msg.query_message if msg.type == 5 else msg.response_message
    if wire is None or msg.query_address is None:
        return None
    try:
        q = question(wire)
    except MessageError:
        return None
    response = msg.type == 6
    return Observation("dnstap", msg.query_address, q.name, q.qtype, response, msg.query_port, q.id,
                       wire if response else None)


def _interface_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()
