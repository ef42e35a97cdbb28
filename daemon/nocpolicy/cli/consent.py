"""nocpolicyctl consent show|set (Art. 45 consent by purpose)."""

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
