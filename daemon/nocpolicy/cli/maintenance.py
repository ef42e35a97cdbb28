"""nocpolicyctl maintenance add|list|show|update|cancel, contact set|show, notices."""

from __future__ import annotations

from .client import run


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def register(sub) -> None:
    m = sub.add_parser("maintenance", help="maintenance and fault windows with notices (Art. 24)")
    msub = m.add_subparsers(dest="maintenance_cmd", metavar="ACTION", required=True)

    p = msub.add_parser("add", help="create a window; refused if its notice deadline has passed (unless --urgent)")
    p.add_argument("--id", help="window id (default: generated)")
    p.add_argument("--kind", choices=("planned", "fault"), required=True)
    p.add_argument("--start", required=True, help="ISO 8601; without an offset read in settings.timezone")
    p.add_argument("--end", required=True)
    p.add_argument("--reason-ja", required=True, help="reason in Japanese (理由)")
    p.add_argument("--reason-en", required=True, help="reason in English")
    p.add_argument("--impact", default="OUTAGE", help="NO-IMPACT, REDUCED-REDUNDANCY, DEGRADED, OUTAGE")
    _scope_args(p)
    p.add_argument("--urgent", action="store_true", help="urgent and unavoidable (Art. 24(2) proviso)")
    p.add_argument("--justification", default="", help="why it is urgent (required with --urgent)")
    p.set_defaults(func=cmd_add)

    p = msub.add_parser("list", help="windows")
    p.add_argument("--state", help="scheduled, notified, active, completed, cancelled")
    p.set_defaults(func=cmd_list)

    p = msub.add_parser("show", help="one window with its deadline, customers, notices and impact records")
    p.add_argument("id")
    p.set_defaults(func=cmd_show)

    p = msub.add_parser("update", help="reschedule or edit a window (update notices go out)")
    p.add_argument("id")
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--reason-ja")
    p.add_argument("--reason-en")
    p.add_argument("--impact")
    p.add_argument("--urgent", action="store_true", default=None)
    p.add_argument("--justification")
    p.set_defaults(func=cmd_update)

    p = msub.add_parser("cancel", help="cancel a window (an active one ends now)")
    p.add_argument("id")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_cancel)

    c = sub.add_parser("contact", help="customers' fault contacts (Art. 24(3)(4))")
    csub = c.add_subparsers(dest="contact_cmd", metavar="ACTION", required=True)
    p = csub.add_parser("set", help="record a new fault contact version")
    p.add_argument("customer")
    p.add_argument("--email")
    p.add_argument("--webhook")
    p.add_argument("--mqtt-topic")
    p.add_argument("--language", choices=("ja", "en", "ja+en"))
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_contact_set)
    p = csub.add_parser("show", help="current fault contact and its history")
    p.add_argument("customer")
    p.set_defaults(func=cmd_contact_show)

    p = sub.add_parser("notices", help="the notice outbox")
    p.add_argument("--state", help="pending, sending, sent, failed, superseded, skipped (e-mail state)")
    p.add_argument("--window")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_notices)


def _scope_args(p) -> None:
    p.add_argument("--customers", help="comma-separated customer ids")
    p.add_argument("--tags", help="comma-separated service tags")
    p.add_argument("--nodes", help="comma-separated node names")
    p.add_argument("--prefixes", help="comma-separated prefixes")


def _window_line(w: dict) -> str:
    return (f"{w['id']:<24} {w['kind']:<8} {w['state']:<10} {w.get('start_local', w['start'])[:16]} -> "
            f"{w.get('end_local', w['end'])[:16]}  {w['impact']:<18} seq {w['sequence']}"
            + ("  URGENT" if w.get("urgent") else ""))


def _print_overlaps(out: dict) -> None:
    for o in out.get("overlaps") or []:
        print(f"warning: overlaps window {o['window']} for {o['customers']} customer(s) from {o['from']} to {o['to']}")


def cmd_add(args, client) -> int:
    scope = {k: _csv(getattr(args, k)) for k in ("customers", "tags", "nodes", "prefixes") if getattr(args, k)}
    payload = {"kind": args.kind, "start": args.start, "end": args.end,
               "reason": {"ja": args.reason_ja, "en": args.reason_en}, "impact": args.impact, "scope": scope,
               "urgent": bool(args.urgent), "justification": args.justification}
    if args.id:
        payload["id"] = args.id

    def render(out):
        w = out["window"]
        print(_window_line(w))
        print(f"deadline: {w['deadline']['reason'] if w.get('deadline') else '-'}")
        print(f"{len(out['customers'])} customer(s) affected, {out['notices_queued']} notice(s) queued"
              + ("" if out.get("smtp") else " (no SMTP configured: they wait in the outbox)"))
        _print_overlaps(out)
    return run(client, args, "maintenance.add", payload, render)


def cmd_list(args, client) -> int:
    def render(out):
        if not out["windows"]:
            print("no windows")
        for w in out["windows"]:
            print(f"{_window_line(w)}  {w['customers']} customer(s)")
    return run(client, args, "maintenance.list", {"state": args.state} if args.state else {}, render)


def cmd_show(args, client) -> int:
    def render(out):
        w = out["window"]
        print(_window_line(w))
        print(f"reason:  {w['reason']['ja']} / {w['reason']['en']}")
        scope = "; ".join(f"{k}: {', '.join(v)}" for k, v in w["scope"].items() if v)
        print(f"scope:   {scope}   -> customers: {', '.join(out['customers'])}")
        if w.get("urgent"):
            print(f"urgent:  {w['justification']}")
        if w.get("deadline"):
            print(f"notice:  {w['deadline']['reason']}")
        _print_overlaps(out)
        print("notices:")
        for n in out["notices"]:
            print(f"  {n['kind']:<10} seq {n['sequence']:<3} {n['customer']:<10} {n['state']:<10} "
                  f"contact v{n['contact_version']} {n['recipient'] or '-'}  {n['last_error']}")
        if out["impacts"]:
            print("impact:")
            for i in out["impacts"]:
                print(f"  {i['customer']:<10} {i['start']} -> {i['end'] or '(ongoing)'}"
                      + (f"  {i['seconds']:.0f}s" if i["seconds"] is not None else ""))
    return run(client, args, "maintenance.show", {"id": args.id}, render)


def cmd_update(args, client) -> int:
    payload: dict = {"id": args.id}
    for k in ("start", "end", "impact", "justification"):
        if getattr(args, k) is not None:
            payload[k] = getattr(args, k)
    if args.urgent:
        payload["urgent"] = True
    if args.reason_ja or args.reason_en:
        if not (args.reason_ja and args.reason_en):
            print("nocpolicyctl: give both --reason-ja and --reason-en")
            return 2
        payload["reason"] = {"ja": args.reason_ja, "en": args.reason_en}

    def render(out):
        print(_window_line(out["window"]))
        print(f"{out['notices_queued']} update notice(s) queued")
        _print_overlaps(out)
    return run(client, args, "maintenance.update", payload, render)


def cmd_cancel(args, client) -> int:
    def render(out):
        print(_window_line(out["window"]))
        print(f"{out['notices_queued']} cancellation notice(s) queued")
    return run(client, args, "maintenance.cancel", {"id": args.id, "reason": args.reason}, render)


def cmd_contact_set(args, client) -> int:
    payload = {"customer": args.customer, "reason": args.reason}
    for k in ("email", "webhook", "mqtt_topic", "language"):
        if getattr(args, k):
            payload[k] = getattr(args, k)

    def render(out):
        c = out["contact"]
        print(f"{c['customer']}: fault contact version {c['version']} ({c['email'] or '-'}); "
              f"{out['notices_retargeted']} undelivered notice(s) now go to it"
              + (f" ({out['mqtt_retargeted']} by MQTT)" if out.get("mqtt_retargeted") else ""))
    return run(client, args, "contact.set", payload, render)


def cmd_contact_show(args, client) -> int:
    def render(out):
        for h in out["history"]:
            mark = "*" if h["version"] == out["current"]["version"] else " "
            print(f"{mark} v{h['version']:<3} {h['ts'][:19]} {h['source']:<8} {h['actor']:<14} "
                  f"{h['email'] or '-'} {h['webhook'] or ''} {h['mqtt_topic'] or ''} ({h['language']}) {h['reason']}")
    return run(client, args, "contact.show", {"customer": args.customer}, render)


def cmd_notices(args, client) -> int:
    payload: dict = {"limit": args.limit}
    if args.state:
        payload["state"] = args.state
    if args.window:
        payload["window"] = args.window

    def render(out):
        if not out.get("smtp"):
            print("SMTP is not configured (maintenance.smtp): notices wait in the outbox")
        print("summary: " + (", ".join(f"{k} {v}" for k, v in sorted(out["summary"].items())) or "empty"))
        for n in out["notices"]:
            print(f"{n['created'][:19]} {n['window_id']:<20} {n['kind']:<10} seq {n['sequence']:<3} "
                  f"{n['customer']:<10} {n['state']:<10} v{n['contact_version']} {n['recipient'] or '-'} "
                  f"{n['message_id']} {n['last_error']}"
                  + (f" webhook:{n['webhook_state']}" if n.get("webhook_state") else "")
                  + (f" mqtt:{n['mqtt_state']} {n['mqtt_topic']}"
                     + (f" ({n['mqtt_error']})" if n.get("mqtt_error") else "") if n.get("mqtt_state") else ""))
    return run(client, args, "notices", payload, render)
