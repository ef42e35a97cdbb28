"""ICT-ISAC exports (Art. 45(1)(2)): attack records in, only the consented ones out.

``isac.export`` takes attack records (CSV or JSON text, from the CLI, the admin API or MQTT),
attributes each victim (customer id, or address at the record's time through
``Attribution``), keeps the records whose victim had consented to the purpose at that
time (the consent history of the subscribers area) and writes them as JSON lines to
``<state-dir>/exports/`` (0600) with a manifest: counts, records excluded by reason, the
file's SHA-256. Each export is audited. Excluded records are only counted: they are never
written to a file, the store, the audit or the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

from ..component import Component
from ..control.commands import Command
from ..errors import Invalid
from ..policy.fields import as_str
from .gate import PURPOSES, gate, parse_records, victims

log = logging.getLogger(__name__)


class Exports(Component):
    name = "exports"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.subscribers = ctx.subscribers
        self.attribution = None                 # advisories.attribution.Attribution, from app.wire
        self.directory = Path(ctx.options.state_dir) / "exports"
        self.counts = {"exported": 0, "unattributed": 0, "unknown-customer": 0, "no-consent": 0}
        self._lock = asyncio.Lock()

    def commands(self) -> list[Command]:
        return [Command("isac.export", self._cmd_export, "attack records for ICT-ISAC: only those whose "
                        "victim consented (text, format, purpose)")]

    def collectors(self) -> list:
        return [ExportCollector(self)]

    async def _cmd_export(self, args, inv) -> dict:
        text = args.req("text", as_str)
        fmt = args.get("format", as_str, "auto")
        purpose = args.get("purpose", as_str, "isac-probe")
        source = args.get("source", as_str, "records") or "records"
        args.check()
        if purpose not in PURPOSES:
            raise Invalid(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}", field="purpose")
        async with self._lock:
            return await asyncio.to_thread(self.export, text, fmt, purpose, source[:200], inv.actor)

    def export(self, text: str, fmt: str, purpose: str, source: str, actor: str) -> dict:
        """Blocking: parse, gate, write file and manifest, audit."""
        records = parse_records(text, fmt, source)
        attribute = self.attribution.attribute if self.attribution is not None else (
            lambda a, t, p: (None, "no attribution"))
        customers = victims(records, attribute)
        view = self.subscribers.view
        consent_at = self.subscribers.consent_at({c for c in customers if c}, purpose)
        kept, excluded = gate(records, customers, lambda c: view.get(c) is not None, consent_at)
        manifest = self._write(kept, excluded, len(records), purpose, source, actor)
        self.ctx.store.audit(actor, "isac.export", f"export:{manifest['id']}", None, manifest)
        self.counts["exported"] += len(kept)
        for k, n in excluded.items():
            self.counts[k] += n
        log.info("ICT-ISAC export %s (%s): %d of %d record(s) exported, %d excluded", manifest["id"], purpose,
                 len(kept), len(records), sum(excluded.values()))
        return manifest

    def _write(self, kept, excluded, received: int, purpose: str, source: str, actor: str) -> dict:
        now = self.ctx.clock.now()
        xid = f"isac-{purpose}-{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
        self.directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        body = "".join(json.dumps(r.exported(), ensure_ascii=False, sort_keys=True) + "\n" for r in kept).encode()
        data = self.directory / f"{xid}.jsonl"
        _write_0600(data, body)
        manifest = {"id": xid, "purpose": purpose, "created": now.isoformat(), "actor": actor, "source": source,
                    "file": data.name, "sha256": hashlib.sha256(body).hexdigest(), "bytes": len(body),
                    "received": received, "exported": len(kept), "excluded": excluded,
                    "excluded_total": sum(excluded.values())}
        path = self.directory / f"{xid}.manifest.json"
        _write_0600(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        return {**manifest, "path": str(data), "manifest": str(path)}


def _write_0600(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ExportCollector:
    def __init__(self, comp: Exports):
        self.comp = comp

    def describe(self):
        return []

    def collect(self):
        c = CounterMetricFamily("nocpolicy_isac_export_records", "Attack records handled by ICT-ISAC exports, by "
                                "result (exported, or why excluded)", labels=["result"])
        for k, n in self.comp.counts.items():
            c.add_metric([k], n)
        yield c
