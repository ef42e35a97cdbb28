"""Attack records and the consent gate (pure).

A record: ``time`` (ISO 8601 with offset), the victim as ``victim`` (customer id) or
``victim_address`` (+ ``victim_port``), the attacker's ``source_address`` and
``source_port``, and an optional ``kind``. :func:`gate` keeps only the records whose
victim customer had consented to the export's purpose at the record's time; the rest are
only counted, by reason.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..advisories.rows import Problems, address_of, port_of, read_rows, text_of, time_of

PURPOSES = ("isac-source", "isac-probe")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


@dataclass(frozen=True)
class AttackRecord:
    time: dt.datetime
    victim: str | None
    victim_address: str | None
    victim_port: int | None
    source_address: str
    source_port: int | None
    kind: str | None

    def exported(self) -> dict:
        """What the export file holds: no customer id (the association gets records, not accounts)."""
        return {"time": self.time.isoformat(), "victim_address": self.victim_address,
                "victim_port": self.victim_port, "source_address": self.source_address,
                "source_port": self.source_port, "kind": self.kind}


def parse_records(text: str, fmt: str, source: str) -> list[AttackRecord]:
    p = Problems()
    out = []
    for where, row in read_rows(text, fmt, source, "records"):
        if not isinstance(row, dict):
            p.add(where, "(record)", "must be an object")
            continue
        victim = text_of(p, where, row, "victim", required=False)
        if victim is not None and not ID_RE.match(victim):
            p.add(where, "victim", f"{victim!r} is not a customer id")
        vaddr = address_of(p, where, row, "victim_address", required=False)
        if victim is None and vaddr is None and "victim_address" not in row:
            p.add(where, "victim", "give victim (customer id) or victim_address")
        rec = AttackRecord(time_of(p, where, row, "time"), victim, vaddr, port_of(p, where, row, "victim_port"),
                           address_of(p, where, row, "source_address"), port_of(p, where, row, "source_port"),
                           text_of(p, where, row, "kind", required=False))
        out.append(rec)
    p.raise_if_any()
    return out


Attribute = Callable[[str, float, int | None], tuple[str | None, str]]
ConsentAt = Callable[[str, dt.datetime], bool]


def victims(records: list[AttackRecord], attribute: Attribute) -> list[str | None]:
    """The victim customer of each record (attributed by address when no id is given)."""
    return [r.victim if r.victim is not None else attribute(r.victim_address, r.time.timestamp(), r.victim_port)[0]
            for r in records]


def gate(records: list[AttackRecord], customers: list[str | None], known: Callable[[str], bool],
         consent_at: ConsentAt) -> tuple[list[AttackRecord], dict[str, int]]:
    """(records to export, excluded counts by reason: unattributed | unknown-customer | no-consent)."""
    kept: list[AttackRecord] = []
    excluded = {"unattributed": 0, "unknown-customer": 0, "no-consent": 0}
    for rec, cid in zip(records, customers, strict=True):
        if cid is None:
            excluded["unattributed"] += 1
        elif not known(cid):
            excluded["unknown-customer"] += 1
        elif not consent_at(cid, rec.time):
            excluded["no-consent"] += 1
        else:
            kept.append(rec)
    return kept, excluded
