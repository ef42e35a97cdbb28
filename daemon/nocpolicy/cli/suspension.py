"""nocpolicyctl suspend|resume|suspensions|terminate (Art. 25, 27), abolition announce (Art. 26)."""

from __future__ import annotations

from .client import run


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def register(sub) -> None:
    p = sub.add_parser("suspend", help="suspend or restrict one customer (Art. 25) after a notice of reason "
                       "and period (refused without one unless --urgent)")
    p.add_argument("customer")
    p.add_argument("--cause", required=True, choices=("nonpayment", "obligations", "prohibited-use", "wholesale"))
    p.add_argument("--mode", required=True, choices=("walled-garden", "throttle", "block"))
    p.add_argument("--reason", required=True, help="shown to the customer (notice, DNS EDE text, notice page)")
    p.add_argument("--from", dest="start", help="ISO 8601, in the future (the notice goes out now); "
                   "without an offset read as Asia/Tokyo; omit only with --urgent (starts now)")
    p.add_argument("--until", help="ISO 8601 end (default: until resumed)")
    p.add_argument("--rate", help="throttle: cap in both directions, e.g. 1mbit (at most the plan's)")
    p.add_argument("--urgent", action="store_true", help="no notice beforehand (Art. 25 proviso)")
    p.add_argument("--justification", default="", help="why it is urgent (required with --urgent)")
    p.set_defaults(func=cmd_suspend)

    p = sub.add_parser("resume", help="end a customer's suspension now (or cancel a scheduled one)")
    p.add_argument("customer")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("suspensions", help="open suspensions, or one customer's history with impact records")
    p.add_argument("--customer")
    p.add_argument("--terminable", action="store_true", help="only those unresolved past Art. 27(1)'s period")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("terminate", help="record the termination of a terminable suspension's contract; the "
                       "Art. 27(2) notice goes out first")
    p.add_argument("customer")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=cmd_terminate)

    a = sub.add_parser("abolition", help="abolition of a service (Art. 26)")
    asub = a.add_subparsers(dest="abolition_cmd", metavar="ACTION", required=True)
    p = asub.add_parser("announce", help="send the 3-month notice to every affected customer (refused when "
                        "the date is less than 3 calendar months away)")
    p.add_argument("--customers", help="comma-separated customer ids")
    p.add_argument("--plans", help="comma-separated plan ids")
    p.add_argument("--tags", help="comma-separated tags")
    p.add_argument("--date", required=True, help="the day the service ends (YYYY-MM-DD, local)")
    p.add_argument("--reason", required=True)
    p.add_argument("--service", help="the service's name in the notice (default: the plans)")
    p.set_defaults(func=cmd_abolition)


def _line(s: dict) -> str:
    return (f"{s['id']:<5} {s['customer']:<12} {s['state']:<10} {s['mode']:<13} {s['cause']:<14} "
            f"{s['start'][:16]} -> {(s['end'] or 'resumed')[:16]}" + (f"  rate {s['rate']}" if s["rate"] else "")
            + ("  TERMINABLE" if s["terminable"] and s["state"] == "active" else "")
            + ("  URGENT" if s["urgent"] else ""))


def cmd_suspend(args, client) -> int:
    payload = {"customer": args.customer, "cause": args.cause, "mode": args.mode, "reason": args.reason,
               "urgent": bool(args.urgent), "justification": args.justification}
    for key, value in (("from", args.start), ("until", args.until), ("rate", args.rate)):
        if value:
            payload[key] = value

    def render(out):
        s = out["suspension"]
        print(_line(s))
        print(f"terminable (Art. 27(1)) from {s['terminable_at']}")
    return run(client, args, "suspension.suspend", payload, render)


def cmd_resume(args, client) -> int:
    def render(out):
        print(f"{out['event']}: {_line(out['suspension'])}")
    return run(client, args, "suspension.resume", {"customer": args.customer, "reason": args.reason}, render)


def cmd_list(args, client) -> int:
    payload = {"terminable": bool(args.terminable)}
    if args.customer:
        payload["customer"] = args.customer

    def render(out):
        fleet = out.get("fleet") or []
        if not out["suspensions"] and not fleet:
            print("no suspensions")
        for s in out["suspensions"]:
            print(_line(s))
        for s in fleet:           # a fleet agent: in force as the controller decided
            print(f"{s['customer']:<16} {s['mode']:<14} {s['cause']:<15} from {s['start']} until "
                  f"{s['end'] or 'resumed'} (fleet, {s['actor']}, {s['note']})")
        for i in out.get("impacts") or []:
            print(f"  impact {i['suspension_id']}: {i['mode']} {i['start']} -> {i['end'] or '(ongoing)'}"
                  + (f"  {i['seconds']:.0f}s" if i["seconds"] is not None else ""))
        for x in out.get("letters") or []:
            print(_letter(x))
    return run(client, args, "suspension.list", payload, render)


def _letter(x: dict) -> str:
    """``  letter notice susp-3 v2 email:sent new@example webhook:sent mqtt:pending nocpolicy/v1/...``"""
    parts = [f"  letter {x['kind']} {x['reference']} v{x['contact_version'] or '-'}",
             f"email:{x['email']['state']}" + (f" {x['email']['to']}" if x["email"]["to"] else "")]
    for ch, where in (("webhook", "url"), ("mqtt", "topic")):
        if x[ch]:
            parts.append(f"{ch}:{x[ch]['state']} {x[ch][where]}")
    return " ".join(parts)


def cmd_terminate(args, client) -> int:
    def render(out):
        print(f"terminated: {_line(out['suspension'])} (Art. 27(2) notice queued)")
    return run(client, args, "suspension.terminate", {"customer": args.customer, "reason": args.reason}, render)


def cmd_abolition(args, client) -> int:
    scope = {k: _csv(getattr(args, k)) for k in ("customers", "plans", "tags") if getattr(args, k)}
    payload = {"scope": scope, "date": args.date, "reason": args.reason}
    if args.service:
        payload["service"] = args.service

    def render(out):
        print(f"abolition {out['id']}: {len(out['customers'])} customer(s), {out['notices_queued']} notice(s) "
              f"queued; {out['deadline']['reason']}")
    return run(client, args, "abolition.announce", payload, render)
