"""Notice delivery throughput: nocpolicy's outbox (commit 'sending', send, commit result, per notice)
versus a bare aiosmtplib loop rendering and sending the same messages, both into the same local aiosmtpd.

Loopback only; bounded: N notices per run, RUNS runs each. Prints medians side by side.
Usage: /tmp/venv/bin/python bench/maintenance_outbox_bench.py [N] [RUNS]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib
from aiosmtpd.controller import Controller

from nocpolicy.clock import SystemClock
from nocpolicy.maintenance import outbox
from nocpolicy.maintenance.contacts import ContactVersion
from nocpolicy.maintenance.notice import NoticeData, message_id, render
from nocpolicy.maintenance.schema import MIGRATIONS
from nocpolicy.maintenance.smtp import Mailer
from nocpolicy.policy.maintenance import Smtp
from nocpolicy.store import Store


class Sink:
    def __init__(self):
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        return "250 OK"


def notices(n: int, run: str) -> list[NoticeData]:
    t = dt.datetime(2026, 1, 20, 1, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        cid = f"c{i:05d}"
        out.append(NoticeData(f"mw-{run}", "planned", "notice", 0, t, t + dt.timedelta(hours=4), "ルータ交換",
                              "router swap", "OUTAGE", "tags: all", cid, f"Customer {i}", ("192.0.2.0/26",),
                              "Example NOC", "noc@isp.example", (f"{cid}@cust.example",),
                              message_id(f"mw-{run}", cid, "notice", 0, "noc@isp.example"), dt.datetime.now(dt.UTC)))
    return out


async def run_outbox(port: int, data: list[NoticeData], tmp: Path) -> float:
    store = Store(tmp / f"bench-{time.monotonic_ns()}.db")
    store.migrate("maintenance", MIGRATIONS)
    clock = SystemClock()
    with store.transaction() as db:
        db.execute("INSERT INTO mw_window (id, source, kind, start, end, reason_ja, reason_en, impact, scope, state,"
                   " created, updated, actor) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   (data[0].window_id, "runtime", "planned", "x", "x", "x", "x", "OUTAGE", "{}", "notified", "", "",
                    "bench"))
        for d in data:
            cv = ContactVersion(d.customer_id, 1, d.recipients[0], None, None, "ja+en", "policy", "b", "", "")
            outbox.enqueue(db, d, cv, clock.now())
    mailer = Mailer(Smtp(host="127.0.0.1", port=port, sender="noc@isp.example"))
    delivery = outbox.Delivery(store, clock)
    t0 = time.perf_counter()
    while await delivery.run_once(mailer):
        pass
    elapsed = time.perf_counter() - t0
    sent = store.one("SELECT COUNT(*) n FROM mw_outbox WHERE state='sent'")["n"]
    store.close()
    assert sent == len(data), sent
    return elapsed


async def run_bare(port: int, data: list[NoticeData]) -> float:
    t0 = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for d in data:
        await client.send_message(render(d), sender="noc@isp.example", recipients=list(d.recipients))
    await client.quit()
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = Sink()
    ctl = Controller(sink, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ours, bare = [], []
            for r in range(runs):
                ours.append(asyncio.run(run_outbox(port, notices(n, f"o{r}"), Path(tmp))))
                bare.append(asyncio.run(run_bare(port, notices(n, f"b{r}"))))
    finally:
        ctl.stop()
    mo, mb = statistics.median(ours), statistics.median(bare)
    print(f"{n} notices x {runs} runs into local aiosmtpd (medians)")
    print(f"  nocpolicy outbox (render + 2 commits per notice): {mo:6.2f} s  {n / mo:7.0f} notices/s")
    print(f"  bare aiosmtplib loop (same render, no store)    : {mb:6.2f} s  {n / mb:7.0f} notices/s")
    print(f"  outbox overhead: {100 * (mo - mb) / mb:.0f}%   (sink received {sink.n})")


if __name__ == "__main__":
    main()
