"""nocpolicyctl fleet status: which nodes lag behind the controller's plan."""

from __future__ import annotations

from .client import run


def register(sub) -> None:
    p = sub.add_parser("fleet", help="fleet of router agents (controller) or this agent's plan")
    fsub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND", required=True)
    s = fsub.add_parser("status", help="convergence summary and the nodes that lag (exit 1 if any)")
    s.add_argument("--all", action="store_true", help="list every node, converged ones too")
    s.set_defaults(func=cmd_status)


def _link(out: dict) -> str:
    m = out.get("mqtt") or {}
    if not m.get("enabled"):
        return "MQTT off (no --mqtt)"
    state = "connected" if m.get("connected") else f"NOT connected ({m.get('last_error') or 'connecting'})"
    return f"{m.get('broker')} {state}"


def cmd_status(args, client) -> int:
    def render(out: dict) -> int:
        print(f"node {out.get('node')} role {out.get('role')}: {_link(out)}")
        if out.get("role") == "agent":
            _agent_state(out.get("state") or {})
            plan = out.get("plan")
            if not plan:
                print("no plan received yet")
                return 1
            print(f"plan version {plan['version']} {plan['result']} at {plan['at']}: {plan['detail']}")
            return 0 if plan["result"] != "failed" else 1
        if "counts" not in out:
            print("not a fleet controller (run nocpolicyd --role controller)")
            return 0
        c = out["counts"]
        total = sum(c.values())
        print(f"plan version {out['version']} issued {out.get('issued_at')}: {total} node(s): "
              + ", ".join(f"{n} {s}" for s, n in c.items()))
        rows = [r for r in out["nodes"] if args.all or r["state"] != "converged"]
        if rows:
            print(f"{'NODE':<24} {'STATE':<10} {'WANT':>5} {'ACKED':>5} {'LAG':>8}  DETAIL")
            for r in rows:
                lag = f"{r['lag_seconds']:.1f}s" if r.get("lag_seconds") is not None else "-"
                detail = r.get("detail") or ("" if r["online"] else "status offline" if r["online"] is False
                                             else "never seen")
                print(f"{r['node']:<24} {r['state']:<10} {r['desired'] or '-':>5} {r['acked'] or '-':>5} "
                      f"{lag:>8}  {detail}")
        lagging = total - c.get("converged", 0)
        if lagging and not args.all:
            print(f"{lagging} node(s) lag behind plan version {out['version']}")
        state_lag = _controller_state(out.get("state") or {}, args.all)
        return 1 if lagging or state_lag else 0
    return run(client, args, "fleet.status", {}, render)


def _controller_state(st: dict, everything: bool) -> int:
    """Fleet state per kind, and the (node, kind) pairs that lag; how many lag."""
    rows = st.get("rows") or []
    for kind, k in (st.get("kinds") or {}).items():
        mine = [r for r in rows if r["kind"] == kind]
        counts = {s: sum(1 for r in mine if r["state"] == s) for s in ("converged", "pending", "offline")}
        print(f"state {kind} version {k['version']}: {len(mine)} node(s): "
              + ", ".join(f"{n} {s}" for s, n in counts.items()))
    shown = [r for r in rows if everything or r["state"] != "converged"]
    if shown:
        print(f"{'NODE':<24} {'KIND':<10} {'STATE':<10} {'WANT':>11} {'HELD':>11} {'LAG':>8}  DETAIL")
        for r in shown:
            lag = f"{r['lag_seconds']:.1f}s" if r.get("lag_seconds") is not None else "-"
            want, held = "/".join(map(str, r["want"])), "/".join(map(str, r["held"]))
            detail = r.get("detail") or (f"result {r['result']}" if r.get("result") else "")
            print(f"{r['node']:<24} {r['kind']:<10} {r['state']:<10} {want:>11} {held:>11} {lag:>8}  {detail}")
    lagging = sum(1 for r in rows if r["state"] != "converged")
    if lagging and not everything:
        print(f"{lagging} node/kind pair(s) lag behind the fleet state (versions: fleet-wide/own node)")
    return lagging


def _agent_state(st: dict) -> None:
    if not st:
        return
    held = st.get("held") or {}
    print(f"fleet state from {st.get('controller') or '(no controller heard yet)'}: "
          + (", ".join(f"{k} " + "/".join(f"{s} v{v}" for s, v in sorted(sc.items())) for k, sc in held.items())
             or "nothing held yet"))
    refused = {k: v for k, v in (st.get("refused") or {}).items() if v}
    if refused:
        print("refused state messages: " + ", ".join(f"{k} {v}" for k, v in sorted(refused.items())))
