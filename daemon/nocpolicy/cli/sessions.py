"""nocpolicyctl whois, sessions: who held an address, and the session history."""

from __future__ import annotations

import datetime as dt

from .client import run


def register(sub) -> None:
    p = sub.add_parser("whois", help="which customer and session held ADDRESS (now, or --at TIME)")
    p.add_argument("address", help="IPv4/IPv6 address (an address inside a delegated prefix works; a CGNAT "
                   "public address needs --port)")
    p.add_argument("--at", metavar="TIME", help="ISO 8601 time; without an offset, the policy's time zone "
                   "(e.g. '2026-12-01 03:12:44' or 2026-12-01T03:12:44+09:00); default now")
    p.add_argument("--port", type=int, metavar="N", help="source port, for a CGNAT public address")
    p.set_defaults(func=cmd_whois)

    p = sub.add_parser("sessions", help="session history: of one customer, or only the active ones")
    p.add_argument("--customer", metavar="ID", help="only this customer (also implicit ones)")
    p.add_argument("--active", action="store_true", help="only sessions still open")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_sessions)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _session_line(s: dict) -> str:
    who = s["customer"] or "(unattributed)"
    if s.get("implicit"):
        who += " (implicit)"
    return (f"{who:<22} {' '.join(s['addresses']):<44} {s['source']:<6} {s['nas']:<24} "
            f"{_when(s['start'])} -> {_when(s['stop'])} {s.get('ended') or 'active'}"
            + (f"  login {s['login']}" if s.get("login") else ""))


def cmd_whois(args, client) -> int:
    payload = {"address": args.address}
    if args.at:
        payload["at"] = args.at
    if args.port is not None:
        payload["port"] = args.port

    def render(out):
        print(f"{out['address']}" + (f" port {out['port']}" if out.get("port") is not None else "")
              + f" at {_when(out['at'])}")
        if out.get("nat"):
            n = out["nat"]
            print(f"  CGNAT pool {n['pool']}: ports {n['ports'][0]}-{n['ports'][1]} -> {n['internal']}")
        for m in out["matches"]:
            print("  " + _session_line(m["session"]))
        if out.get("unattributed"):
            print(f"  unattributed: {out['unattributed']}")
        return 0
    return run(client, args, "whois", payload, render)


def cmd_sessions(args, client) -> int:
    payload = {"active": bool(args.active), "limit": args.limit}
    if args.customer:
        payload["customer"] = args.customer

    def render(out):
        for s in out["sessions"]:
            print(_session_line(s))
        print(f"{len(out['sessions'])} session(s) shown; {out['active']} active in all")
        return 0
    return run(client, args, "sessions", payload, render)
