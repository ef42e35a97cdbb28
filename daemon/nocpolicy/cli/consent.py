"""nocpolicyctl consent show|set, isac-export, advisory import|resolve, advisories (Art. 45)."""

from __future__ import annotations

from .client import run

PURPOSES = ("cc-blocking", "analysis", "isac-source", "isac-probe")


def register(sub) -> None:
    p = sub.add_parser("consent", help="a customer's consent by purpose (Art. 45): show, or set PURPOSE on|off")
    s = p.add_subparsers(dest="consent_cmd", metavar="show|set", required=True)
    q = s.add_parser("show", help="each purpose: on/off, clause, who/when/channel")
    q.add_argument("customer")
    q.set_defaults(func=cmd_show)
    q = s.add_parser("set", help="set one purpose on or off (effective for the very next query or record)")
    q.add_argument("customer")
    q.add_argument("purpose", choices=PURPOSES)
    q.add_argument("state", choices=("on", "off"))
    q.add_argument("--channel", choices=("operator", "phone"), default="operator",
                   help="how the customer asked (default operator)")
    q.add_argument("--wording", default="", help="the reason, or the wording shown to the customer (audited)")
    q.set_defaults(func=cmd_set)
    register_isac(sub)
    register_advisories(sub)


def cmd_show(args, client) -> int:
    def render(out):
        print(f"customer {out['customer']}")
        print(f"{'PURPOSE':<12} {'CLAUSE':<12} {'STATE':<5} {'SOURCE':<8} {'CHANNEL':<9} {'SINCE':<33} BY")
        for p in out["purposes"]:
            print(f"{p['purpose']:<12} {p['clause']:<12} {'on' if p['on'] else 'off':<5} {p['source']:<8} "
                  f"{p['channel'] or '-':<9} {p['since'] or '-':<33} {p['actor'] or '-'}")
        return 0
    return run(client, args, "consent.show", {"customer": args.customer}, render)


def cmd_set(args, client) -> int:
    def render(out):
        change = "" if out["changed"] else " (no change)"
        print(f"customer {out['customer']} {out['purpose']} {'ON' if out['on'] else 'OFF'}{change}; "
              "effective from the next query or record")
        return 0
    payload = {"customer": args.customer, "purpose": args.purpose, "on": args.state == "on",
               "channel": args.channel, "wording": args.wording}
    return run(client, args, "consent.set", payload, render)


def register_isac(sub) -> None:
    p = sub.add_parser("isac-export", help="export attack records for ICT-ISAC: only those whose victim "
                       "consented (Art. 45(1)(2)); prints the manifest")
    p.add_argument("file", help="attack records, CSV or JSON (docs/advisories.md)")
    p.add_argument("--purpose", choices=("isac-probe", "isac-source"), default="isac-probe")
    p.add_argument("--format", choices=("auto", "csv", "json"), default="auto")
    p.set_defaults(func=cmd_isac_export)


def read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"nocpolicyctl: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return None


def cmd_isac_export(args, client) -> int:
    text = read_file(args.file)
    if text is None:
        return 2

    def render(out):
        ex = out["excluded"]
        print(f"export {out['id']} ({out['purpose']}): {out['exported']} of {out['received']} record(s) written")
        print(f"excluded: {ex['no-consent']} without consent, {ex['unattributed']} unattributed, "
              f"{ex['unknown-customer']} unknown customer")
        print(f"file     {out['path']}\nsha256   {out['sha256']}\nmanifest {out['manifest']}")
        return 0
    payload = {"text": text, "format": args.format, "purpose": args.purpose, "source": args.file.rsplit("/", 1)[-1]}
    return run(client, args, "isac.export", payload, render)


def register_advisories(sub) -> None:
    p = sub.add_parser("advisory", help="NICT advisories (Art. 45(3)): import FILE, or resolve CASE")
    s = p.add_subparsers(dest="advisory_cmd", metavar="import|resolve", required=True)
    q = s.add_parser("import", help="import advisories from a CSV or JSON file (docs/advisories.md)")
    q.add_argument("file")
    q.add_argument("--format", choices=("auto", "csv", "json"), default="auto")
    q.set_defaults(func=cmd_advisory_import)
    q = s.add_parser("resolve", help="resolve (or --close) an advisory case")
    q.add_argument("case", type=int)
    q.add_argument("--close", action="store_true", help="close instead (e.g. a false report)")
    q.add_argument("--reason", default="")
    q.set_defaults(func=cmd_advisory_resolve)
    p = sub.add_parser("advisories", help="advisory cases and their alerts (--summary: counts)")
    p.add_argument("--summary", action="store_true")
    p.add_argument("--state", choices=("open", "notified", "resolved", "unattributable", "closed"))
    p.add_argument("--customer")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_advisories)


def cmd_advisory_import(args, client) -> int:
    text = read_file(args.file)
    if text is None:
        return 2

    def render(out):
        print(f"{out['received']} advisories: {out['new_cases']} new case(s), {out['attached']} joined an open "
              f"case, {out['duplicate']} duplicate(s), {out['unattributable']} unattributable; "
              f"{out['alerts_queued']} alert(s) queued, {out['alerts_without_contact']} without an e-mail contact")
        return 0
    payload = {"text": text, "format": args.format, "source": args.file.rsplit("/", 1)[-1]}
    return run(client, args, "advisory.import", payload, render)


def cmd_advisory_resolve(args, client) -> int:
    def render(out):
        print(f"case {out['case']}: {out['before']} -> {out['state']}")
        return 0
    payload = {"case": args.case, "state": "closed" if args.close else "resolved", "reason": args.reason}
    return run(client, args, "advisory.resolve", payload, render)


def cmd_advisories(args, client) -> int:
    if args.summary:
        def render_summary(out):
            print(f"{'STATE':<15} {'SOURCE':<7} {'CASES':>6} {'REPORTS':>8}")
            for r in out["cases"]:
                print(f"{r['state']:<15} {r['source']:<7} {r['cases']:>6} {r['reports']:>8}")
            print("alerts: " + (", ".join(f"{k} {v}" for k, v in sorted(out["alerts"].items())) or "none"))
            return 0
        return run(client, args, "advisories", {"summary": True}, render_summary)

    def render(out):
        print(f"{'CASE':>6} {'STATE':<14} {'CUSTOMER':<12} {'SOURCE':<7} {'FINDING':<20} {'N':>4} "
              f"{'FIRST SEEN':<26} ALERT")
        for c in out["cases"]:
            alert = c["alert_state"] or "-"
            if c.get("alert_error"):
                alert += f" ({c['alert_error']})"
            print(f"{c['id']:>6} {c['state']:<14} {c['customer'] or '-':<12} {c['source']:<7} {c['finding']:<20} "
                  f"{c['reports']:>4} {c['first_seen']:<26} {alert}"
                  + (f"  reason: {c['reason']}" if c["reason"] else ""))
        return 0
    payload = {"limit": args.limit, **({"state": args.state} if args.state else {}),
               **({"customer": args.customer} if args.customer else {})}
    return run(client, args, "advisories", payload, render)
