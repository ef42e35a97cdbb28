"""Advisory cases in the state store: advisories, cases (de-duplicated per customer and
finding within the window), and one alert per case (the notice row, also its e-mail
delivery row for the shared outbox loop).

States: ``open`` (alert queued) -> ``notified`` (delivered) -> ``resolved``;
``unattributable`` (with the reason); ``closed`` (by an operator, from any state).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from .model import Advisory

MIGRATIONS = (
    """
    CREATE TABLE adv_case (
        id         INTEGER PRIMARY KEY,
        customer   TEXT,
        source     TEXT NOT NULL,
        service    TEXT NOT NULL,
        finding    TEXT NOT NULL,
        address    TEXT NOT NULL,
        port       INTEGER,
        state      TEXT NOT NULL,
        reason     TEXT NOT NULL DEFAULT '',
        first_seen TEXT NOT NULL,
        last_seen  TEXT NOT NULL,
        reports    INTEGER NOT NULL,
        created    TEXT NOT NULL,
        updated    TEXT NOT NULL
    );
    CREATE INDEX adv_case_open ON adv_case(customer, finding) WHERE state IN ('open', 'notified');
    CREATE INDEX adv_case_state ON adv_case(state, updated);
    CREATE TABLE adv_advisory (
        id          INTEGER PRIMARY KEY,
        source      TEXT NOT NULL,
        advisory_id TEXT NOT NULL,
        address     TEXT NOT NULL,
        port        INTEGER,
        ts          TEXT NOT NULL,
        service     TEXT NOT NULL,
        finding     TEXT NOT NULL,
        detail      TEXT,
        case_id     INTEGER NOT NULL,
        received    TEXT NOT NULL,
        UNIQUE (source, advisory_id)
    );
    CREATE INDEX adv_advisory_case ON adv_advisory(case_id);
    CREATE TABLE adv_alert (
        id              INTEGER PRIMARY KEY,
        case_id         INTEGER NOT NULL UNIQUE,
        customer        TEXT NOT NULL,
        message_id      TEXT NOT NULL UNIQUE,
        recipient       TEXT,
        language        TEXT NOT NULL,
        contact_version INTEGER,
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt    TEXT NOT NULL,
        last_error      TEXT NOT NULL DEFAULT '',
        result          TEXT,
        created         TEXT NOT NULL,
        sent_at         TEXT
    );
    CREATE INDEX adv_alert_due ON adv_alert(state, next_attempt);
    """,
    # 2: webhook deliveries of alerts (the contact's webhook, with maintenance.webhooks on)
    """
    CREATE TABLE adv_hook (
        alert_id     INTEGER PRIMARY KEY REFERENCES adv_alert(id),
        url          TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        last_error   TEXT NOT NULL DEFAULT '',
        status       INTEGER,
        sent_at      TEXT
    );
    CREATE INDEX adv_hook_due ON adv_hook(state, next_attempt);
    """,
    # 3: MQTT deliveries of alerts (the contact's mqtt_topic, through the MQTT bridge)
    """
    CREATE TABLE adv_mqtt (
        alert_id     INTEGER PRIMARY KEY REFERENCES adv_alert(id),
        topic        TEXT NOT NULL,
        state        TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT NOT NULL,
        last_error   TEXT NOT NULL DEFAULT '',
        delivered_at TEXT
    );
    CREATE INDEX adv_mqtt_due ON adv_mqtt(state, next_attempt);
    """,
)

FINISHED = ("resolved", "closed", "unattributable")
# (db, customer) -> (email, language, contact version, webhook URL, MQTT topic)
Contact = Callable[[object, str], tuple[str | None, str, int | None, str | None, str | None]]


@dataclass
class ImportResult:
    received: int = 0
    duplicate: int = 0
    new_cases: int = 0
    attached: int = 0
    unattributable: int = 0
    alerts_queued: int = 0
    alerts_without_contact: int = 0
    by_source: dict = field(default_factory=dict)      # (source, result) -> n

    def count(self, source: str, result: str) -> None:
        self.by_source[(source, result)] = self.by_source.get((source, result), 0) + 1

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "by_source"}


def matching_case(cases: list[dict], t: str, window: float) -> dict | None:
    """The open case of one customer+finding that a report at ``t`` joins (pure)."""
    at = dt.datetime.fromisoformat(t)
    for c in cases:
        lo = dt.datetime.fromisoformat(c["first_seen"]) - dt.timedelta(seconds=window)
        hi = dt.datetime.fromisoformat(c["last_seen"]) + dt.timedelta(seconds=window)
        if lo <= at <= hi:
            return c
    return None


class Importer:
    """One import, inside one transaction (``db``)."""

    def __init__(self, db, now: dt.datetime, window: float, contact_of: Contact, domain: str, hooks: bool = False):
        self.db, self.now, self.window, self.contact_of, self.domain = db, now.isoformat(), window, contact_of, domain
        self.hooks = hooks              # maintenance.webhooks: alerts also go to the contact's webhook
        self.result = ImportResult()
        self.open: dict[tuple[str, str], list[dict]] = {}
        self.touched: dict[int, dict] = {}

    def load_open(self, customers: set[str]) -> None:
        ids = sorted(customers)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for r in self.db.execute(f"SELECT * FROM adv_case WHERE state IN ('open','notified') AND customer IN "
                                     f"({','.join('?' * len(chunk))})", chunk).fetchall():
                self.open.setdefault((r["customer"], r["finding"]), []).append(dict(r))

    def add(self, a: Advisory, customer: str | None, why: str) -> None:
        res = self.result
        res.received += 1
        t = a.time.astimezone(dt.UTC).isoformat()
        if self.db.execute("SELECT 1 FROM adv_advisory WHERE source=? AND advisory_id=?",
                           (a.source, a.advisory_id)).fetchone():
            res.duplicate += 1
            res.count(a.source, "duplicate")
            return
        case = matching_case(self.open.get((customer, a.finding), []), t, self.window) if customer else None
        if case is not None:
            case["reports"] += 1
            case["first_seen"], case["last_seen"] = min(case["first_seen"], t), max(case["last_seen"], t)
            self.touched[case["id"]] = case
            res.attached += 1
            res.count(a.source, "attached")
        else:
            case = self._new_case(a, customer, why, t)
        self.db.execute("INSERT INTO adv_advisory (source, advisory_id, address, port, ts, service, finding, detail,"
                        " case_id, received) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (a.source, a.advisory_id, a.address, a.port, t, a.service, a.finding, a.detail, case["id"],
                         self.now))

    def _new_case(self, a: Advisory, customer: str | None, why: str, t: str) -> dict:
        res = self.result
        state = "open" if customer else "unattributable"
        cur = self.db.execute("INSERT INTO adv_case (customer, source, service, finding, address, port, state, reason,"
                              " first_seen, last_seen, reports, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,1,?,?)",
                              (customer, a.source, a.service, a.finding, a.address, a.port, state, why, t, t,
                               self.now, self.now))
        case = {"id": cur.lastrowid, "customer": customer, "finding": a.finding, "first_seen": t, "last_seen": t,
                "reports": 1}
        if customer is None:
            res.unattributable += 1
            res.count(a.source, "unattributable")
            return case
        self.open.setdefault((customer, a.finding), []).append(case)
        res.new_cases += 1
        res.count(a.source, "new")
        self._alert(case["id"], customer)
        return case

    def _alert(self, case_id: int, customer: str) -> None:
        email, language, version, hook, topic = self.contact_of(self.db, customer)
        hook = hook if self.hooks else None
        if email:
            state, error = "pending", ""
        elif hook or topic:
            state, error = "skipped", "no e-mail fault contact; delivered through the contact's other channels"
        else:
            state, error = "failed", "no e-mail fault contact on record"
        mid = f"<advisory-{case_id}-{secrets.token_hex(4)}@{self.domain}>"
        cur = self.db.execute("INSERT INTO adv_alert (case_id, customer, message_id, recipient, language,"
                              " contact_version, state, next_attempt, last_error, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                              (case_id, customer, mid, email, language, version, state, self.now, error, self.now))
        if hook:
            self.db.execute("INSERT INTO adv_hook (alert_id, url, state, next_attempt) VALUES (?,?,'pending',?)",
                            (cur.lastrowid, hook, self.now))
        if topic:
            self.db.execute("INSERT INTO adv_mqtt (alert_id, topic, state, next_attempt) VALUES (?,?,'pending',?)",
                            (cur.lastrowid, topic, self.now))
        if email or hook or topic:
            self.result.alerts_queued += 1
        else:
            self.result.alerts_without_contact += 1

    def finish(self) -> ImportResult:
        self.db.executemany("UPDATE adv_case SET reports=?, first_seen=?, last_seen=?, updated=? WHERE id=?",
                            [(c["reports"], c["first_seen"], c["last_seen"], self.now, cid)
                             for cid, c in self.touched.items()])
        return self.result


def listing(db, *, state: str | None, customer: str | None, limit: int) -> list[dict]:
    sql = ("SELECT c.*, a.state AS alert_state, a.recipient AS alert_to, a.last_error AS alert_error, "
           "a.sent_at AS alert_sent_at, h.url AS webhook, h.state AS webhook_state, h.last_error AS webhook_error, "
           "m.topic AS mqtt_topic, m.state AS mqtt_state, m.last_error AS mqtt_error "
           "FROM adv_case c LEFT JOIN adv_alert a ON a.case_id = c.id LEFT JOIN adv_hook h ON h.alert_id = a.id "
           "LEFT JOIN adv_mqtt m ON m.alert_id = a.id WHERE 1=1")
    params: list = []
    if state:
        sql += " AND c.state = ?"
        params.append(state)
    if customer:
        sql += " AND c.customer = ?"
        params.append(customer)
    sql += " ORDER BY c.id DESC LIMIT ?"
    return [dict(r) for r in db.execute(sql, (*params, limit)).fetchall()]


def summary(db) -> dict:
    cases = [dict(r) for r in db.execute("SELECT state, source, COUNT(*) AS cases, SUM(reports) AS reports "
                                         "FROM adv_case GROUP BY state, source ORDER BY state, source").fetchall()]
    alerts = {r["state"]: r["n"] for r in db.execute("SELECT state, COUNT(*) AS n FROM adv_alert GROUP BY state")}
    findings = [dict(r) for r in db.execute("SELECT finding, COUNT(*) AS cases FROM adv_case WHERE state IN "
                                            "('open','notified') GROUP BY finding ORDER BY cases DESC LIMIT 20")]
    return {"cases": cases, "alerts": alerts, "open_findings": findings}


def prune(db, before: dt.datetime) -> int:
    """Finished cases last updated before ``before`` go, with their advisories and alert."""
    ids = [r["id"] for r in db.execute(f"SELECT id FROM adv_case WHERE state IN ({','.join('?' * len(FINISHED))}) "
                                       "AND updated < ? LIMIT 10000", (*FINISHED, before.isoformat()))]
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for table in ("adv_hook", "adv_mqtt"):
            db.execute(f"DELETE FROM {table} WHERE alert_id IN (SELECT id FROM adv_alert WHERE case_id IN ({marks}))",
                       chunk)
        for table, col in (("adv_advisory", "case_id"), ("adv_alert", "case_id"), ("adv_case", "id")):
            db.execute(f"DELETE FROM {table} WHERE {col} IN ({marks})", chunk)
    return len(ids)
