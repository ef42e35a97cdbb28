#!/usr/bin/env python3
"""NICT advisories benchmark (issue 17, Art. 45(3)): 10,000 advisories in one import, against a
real nocpolicyd on loopback, with its peer in the same run.

Ours   ``nocpolicyctl advisory import`` of 10,000 advisories (JSON): 5,000 on static customer
       prefixes, 4,000 on live sessions (open RADIUS sessions in the state store, found by the
       sessions whois), 500 repeats of a customer+finding (joined to the open case), 500 nobody
       had (unattributable). Wall time from the CLI's start until it prints the result: parsed,
       attributed, cases written and every alert queued in the outbox. Target <= 60 s.
Peer   the same attribution done the way an operator's script would without this feature: one
       admin API ``whois`` call per advisory address (no case, no alert). Same daemon, same run.

    .venv/bin/python bench/advisories_bench.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

STATIC, DYNAMIC = 5000, 4000


def policy(tmp: Path) -> Path:
    from helpers import copy_policies
    pol = copy_policies(tmp)
    lines = ["customers:"]
    for k in range(STATIC):
        lines.append(f"  - {{id: s{k:05d}, name: S{k}, prefixes: [10.{k >> 8}.{k & 255}.0/24], "
                     f"contact: {{email: s{k}@example.test, language: ja}}}}")
    for k in range(DYNAMIC):
        lines.append(f"  - {{id: h{k:07d}, name: H{k}, contact: {{email: h{k}@example.test, language: ja+en}}}}")
    (pol / "bench-customers.yaml").write_text("\n".join(lines) + "\n")
    return pol


def advisories(now: dt.datetime) -> list[dict]:
    out = []
    for k in range(STATIC):
        out.append({"advisory_id": f"S-{k}", "source": "notice", "address": f"10.{k >> 8}.{k & 255}.7",
                    "port": 23, "time": now.isoformat(), "service": "telnet", "finding": "weak-credentials"})
    for k in range(DYNAMIC):
        out.append({"advisory_id": f"D-{k}", "source": "nicter", "address": f"127.64.{k >> 8}.{k & 255}",
                    "time": now.isoformat(), "service": "scan", "finding": "malware-mirai"})
    for k in range(500):
        out.append({"advisory_id": f"R-{k}", "source": "notice", "address": f"10.{k >> 8}.{k & 255}.9",
                    "port": 23, "time": (now + dt.timedelta(hours=1)).isoformat(), "service": "telnet",
                    "finding": "weak-credentials"})
        out.append({"advisory_id": f"U-{k}", "source": "nicter", "address": f"198.18.{k >> 8}.{k & 255}",
                    "time": now.isoformat(), "service": "scan", "finding": "malware-mirai"})
    return out


def whois_peer(d, items: list[dict]) -> float:
    token = d.token()
    t = time.perf_counter()
    for a in items:
        body = json.dumps({"address": a["address"], "at": a["time"], **({"port": a["port"]} if "port" in a else {})})
        req = urllib.request.Request(f"http://{d.admin}/v1/cmd/whois", data=body.encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
    return time.perf_counter() - t


def one_run(run: int, peer: bool) -> tuple[float, float | None, dict]:
    from sessions_bench import fill_open_sessions

    from helpers import DaemonProcess
    with tempfile.TemporaryDirectory(prefix="nocp-adv-") as tmp:
        tmp = Path(tmp)
        pol = policy(tmp)
        fill_open_sessions(tmp / "state" / "nocpolicy.db", DYNAMIC)     # h0000000.. on 127.64.0.0 + k
        d = DaemonProcess(tmp, policies=pol)
        d.start(wait=False)
        d.wait_ready(timeout=300)
        try:
            items = advisories(dt.datetime.now(dt.UTC))
            f = tmp / "advisories.json"
            f.write_text(json.dumps({"advisories": items}))
            t = time.perf_counter()
            res = d.ctl("--json", "advisory", "import", str(f), timeout=600)
            took = time.perf_counter() - t
            out = json.loads(res.stdout)
            pending = d.ctl_json("advisories", "--summary")["alerts"]
            out["alerts_pending_in_outbox"] = pending.get("pending", 0)
            peer_took = whois_peer(d, items) if peer else None
        finally:
            d.stop(timeout=60)
    print(f"  run {run}: import {took:.1f}s" + (f", whois peer {peer_took:.1f}s" if peer_took else "") +
          f"  {out}")
    return took, peer_took, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    ours, peers = [], []
    for run in range(args.runs):
        took, peer, _ = one_run(run, not args.no_peer)
        ours.append(took)
        if peer is not None:
            peers.append(peer)
    m = statistics.median(ours)
    print(f"advisories: 10,000 in one import: median {m:.1f}s over {args.runs} run(s) (target <= 60 s: "
          f"{m / 60:.2f} of the budget)")
    if peers:
        p = statistics.median(peers)
        print(f"peer: 10,000 admin API whois calls: median {p:.1f}s; import / peer = {m / p:.2f} "
              "(the import also writes cases and queues alerts)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
