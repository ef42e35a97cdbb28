"""nocpolicyctl emergency declare|lift|status, usage."""

from __future__ import annotations

from .client import run


def register(sub) -> None:
    e = sub.add_parser("emergency", help="emergency priority (Art. 23(1)): declare, lift, status")
    esub = e.add_subparsers(dest="emergency_command", metavar="ACTION", required=True)

    p = esub.add_parser("declare", help="declare an emergency with a profile from the policy")
    p.add_argument("--profile", required=True, help="emergency profile id (policies/emergency.yaml)")
    p.add_argument("--scope", action="append", default=[], metavar="INTERFACE",
                   help="limit to this shaped interface; repeatable (default: every shaped interface)")
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--until", metavar="TIME", help="ISO time it lifts itself (no offset: policy time zone)")
    p.add_argument("--dry-run", action="store_true", help="print the rule diff; change nothing")
    p.set_defaults(func=cmd_declare)

    p = esub.add_parser("lift", help="lift the active emergency")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.set_defaults(func=cmd_lift)

    p = esub.add_parser("status", help="the active emergency, what is enforced, recent history")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("usage", help="utilisation per class and customer; customers at their cap")
    p.set_defaults(func=cmd_usage)


def _diff(out: dict) -> None:
    for line in out.get("added", []):
        print(f"+ {line}")
    for line in out.get("removed", []):
        print(f"- {line}")


def cmd_declare(args, client) -> int:
    payload = {"profile": args.profile, "reason": args.reason, "dry_run": bool(args.dry_run)}
    if args.scope:
        payload["scope"] = args.scope
    if args.until:
        payload["until"] = args.until

    def render(out):
        if out.get("dry_run"):
            print(f"dry run: emergency {out['profile']} would change these rules (nothing applied):")
            _diff(out)
            return 0
        em = out["emergency"]
        print(f"emergency {em['id']} declared: profile {em['profile']} on {', '.join(em['scope']) or 'all interfaces'}"
              f", ends {em['ends_at'] or 'when lifted'}")
        print(out.get("note", ""))
        _diff(out)
        return 0
    return run(client, args, "emergency.declare", payload, render)


def cmd_lift(args, client) -> int:
    payload = {"reason": args.reason} if args.reason else {}

    def render(out):
        print(f"emergency {out['lifted']['id']} ({out['lifted']['profile']}) lifted; {out.get('note', '')}")
        _diff(out)
        return 0
    return run(client, args, "emergency.lift", payload, render)


def cmd_status(args, client) -> int:
    def render(out):
        a = out.get("active")
        if a:
            print(f"ACTIVE emergency {a['id']}: profile {a['profile']} since {a['declared_at']} by {a['declared_by']}, "
                  f"ends {a['ends_at'] or 'when lifted'}; reason: {a['reason']}")
        else:
            print("no emergency is active")
        print(f"enforcement: {out['note']} (backend {out['backend']}"
              f"{', netns ' + out['netns'] if out.get('netns') else ''}; {out['features']['detail']})")
        _directions(out)
        for i in out.get("interfaces", []):
            print(f"  {i['name']}: link {i['rate']} bit/s, {i['classes']} classes")
        if out.get("last_error"):
            print(f"last error: {out['last_error']}")
        return 0
    return run(client, args, "emergency.status", {}, render)


def _directions(out) -> None:
    for name, state in (out.get("directions") or {}).items():
        print(f"{name} caps: {state}")


def cmd_usage(args, client) -> int:
    def render(out):
        if not out["enforced"]:
            print(out["note"])
        _directions(out)
        for c in out["classes"]:
            print(f"  {c['interface']:<15} {c['class']:<16} {c['bytes']:>14} bytes {c['packets']:>10} pkts "
                  f"{c['drops']:>8} drops")
        for c in out["customers"]:
            print(f"  customer {c['customer']:<12} {c['bytes']:>14} bytes {c['packets']:>10} pkts")
        for c in out.get("customers_up", []):
            print(f"  customer {c['customer']:<12} {c['bytes']:>14} bytes {c['packets']:>10} pkts uploaded")
        print(f"customers at their cap: {', '.join(out['over_limit']) or 'none'}")
        return 0
    return run(client, args, "usage", {}, render)
