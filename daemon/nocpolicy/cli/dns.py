"""nocpolicyctl: optout, explain, detections, lists, list-update, cache (DNS guard)."""

from __future__ import annotations

from .client import run


def register(sub) -> None:
    p = sub.add_parser("optout", help="security-list opt-out (Art. 45(4)): on|off CUSTOMER, or list")
    p.add_argument("state", choices=("on", "off", "list"), help="on: stop C&C blocking for the customer; "
                   "off: block again; list: show every customer")
    p.add_argument("customer", nargs="?", help="customer id (for on/off)")
    p.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.set_defaults(func=cmd_optout)

    p = sub.add_parser("explain", help="how the DNS guard decides NAME for CLIENT")
    p.add_argument("--client", required=True, help="client IP address")
    p.add_argument("--name", required=True, help="query name")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("detections", help="the detection log (blocks), or a summary")
    p.add_argument("--since", help="ISO time or a duration back from now (24h, 7d)")
    p.add_argument("--customer", help="only this customer")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--summary", action="store_true", help="counts per list, class and customer")
    p.add_argument("--fleet", action="store_true", help="controller: counts of every fleet node (last 24h) "
                   "per list, class, customer and node")
    p.add_argument("--node", help="with --fleet: only this node")
    p.set_defaults(func=cmd_detections)

    p = sub.add_parser("lists", help="block lists: entries, freshness, refresh failures")
    p.set_defaults(func=cmd_lists)

    p = sub.add_parser("list-update", help="add/remove runtime entries of a block list (threat-intel feeds)")
    p.add_argument("list", help="list id")
    p.add_argument("--add", nargs="+", default=[], metavar="NAME")
    p.add_argument("--remove", nargs="+", default=[], metavar="NAME")
    p.add_argument("--reason", default="")
    p.set_defaults(func=cmd_list_update)
    register_cache(sub)


def cmd_optout(args, client) -> int:
    if args.state == "list":
        def render_list(out):
            print(f"{'CUSTOMER':<12} {'OPT-OUT':<8} {'SOURCE':<8} {'SINCE':<33} {'BY':<14} REASON")
            for c in out["customers"]:
                print(f"{c['customer']:<12} {'yes' if c['optout'] else 'no':<8} {c['source']:<8} "
                      f"{c.get('since') or '-':<33} {c.get('actor') or '-':<14} {c.get('reason') or ''}")
            print(f"{out['opted_out']} customer(s) opted out")
            return 0
        return run(client, args, "optout.list", {}, render_list)
    if not args.customer:
        print("nocpolicyctl optout: CUSTOMER is required with on/off")
        return 2

    def render(out):
        state = "opted OUT of" if out["optout"] else "opted IN to"
        change = "" if out["changed"] else " (no change)"
        print(f"customer {out['customer']} {state} security lists{change}; effective from the next query")
        return 0
    payload = {"customer": args.customer, "on": args.state == "on", "reason": args.reason}
    return run(client, args, "optout.set", payload, render)


def cmd_explain(args, client) -> int:
    def render(out):
        cust = out["customer"] or f"(unknown client: {out.get('unknown_client_treatment')})"
        print(f"client   {out['client']} -> customer {cust}")
        if out["customer"]:
            print(f"opt-out  security lists {'APPLY' if out['security_lists'] else 'OPTED OUT'}"
                  f" ({out.get('optout_source')}); optional lists opted in: "
                  f"{', '.join(out['optional_lists']) or 'none'}")
        print(f"name     {out['name']}")
        if not out["matches"]:
            print("matches  none")
        for m in out["matches"]:
            print(f"match    list {m['list']} ({m['class']}) entry {m['entry']} action {m['action']}: "
                  f"{'APPLIES' if m['applies'] else 'does not apply'} ({m['why']})")
        v = out["verdict"]
        if v["blocked"]:
            print(f"verdict  BLOCK {v['action']} by {v['list']} ({v['class']}), EDE {v['ede']}")
        else:
            print(f"verdict  ALLOW ({v['reason']}): forwarded upstream")
        return 0
    return run(client, args, "explain", {"client": args.client, "name": args.name}, render)


def cmd_fleet_detections(args, client) -> int:
    payload = {k: v for k, v in (("customer", args.customer), ("node", args.node)) if v}

    def render(out):
        print(f"fleet detections, last {out['window_hours']:g}h, from {len(out['nodes'])} node(s)")
        print(f"{'LIST':<16} {'CLASS':<10} {'CUSTOMER':<10} {'COUNT':>8}  PER NODE")
        for r in out["summary"]:
            nodes = ", ".join(f"{n} {c}" for n, c in sorted(r["nodes"].items()))
            print(f"{r['list']:<16} {r['class']:<10} {r['customer'] or '-':<10} {r['count']:>8}  {nodes}")
        return 0
    return run(client, args, "fleet.detections", payload, render)


def cmd_detections(args, client) -> int:
    if args.fleet:
        return cmd_fleet_detections(args, client)
    payload: dict = {"limit": args.limit, "summary": bool(args.summary)}
    if args.since:
        payload["since"] = args.since
    if args.customer:
        payload["customer"] = args.customer

    def render(out):
        if "summary" in out:
            print(f"{'LIST':<16} {'CLASS':<10} {'CUSTOMER':<10} {'SOURCE':<8} {'COUNT':>8} {'CLIENTS':>7} "
                  f"{'NAMES':>6}  LAST")
            for r in out["summary"]:
                print(f"{r['list']:<16} {r['class']:<10} {r['customer'] or '-':<10} {r['source']:<8} "
                      f"{r['count']:>8} {r['clients']:>7} {r['names']:>6}  {r['last']}")
            return 0
        for r in reversed(out["detections"]):
            print(f"{r['ts']}  {r['list']:<14} {r['class']:<9} {r['action']:<8} {r['customer'] or '-':<8} "
                  f"client {r['client']}  {r['name']}  x{r['count']}")
        if not out["detections"]:
            print("no detections")
        return 0
    return run(client, args, "detections", payload, render)


def cmd_lists(args, client) -> int:
    def render(out):
        print(f"{'LIST':<16} {'CLASS':<10} {'FORMAT':<9} {'ENTRIES':>8} {'FAILS':>5}  LAST SUCCESS / ERROR")
        for r in out["lists"]:
            err = f"  ERROR: {r['last_error']}" if r.get("last_error") else ""
            copy = " (last good copy)" if r.get("from_last_good_copy") else ""
            print(f"{r['list']:<16} {r['class']:<10} {r['format']:<9} {r['entries']:>8} "
                  f"{r.get('failures', 0):>5}  {r.get('last_success') or 'never'}{copy}{err}")
        return 0
    return run(client, args, "lists", {}, render)


def cmd_list_update(args, client) -> int:
    def render(out):
        print(f"list {out['list']}: added {len(out['added'])}, removed {len(out['removed'])}, "
              f"{out['entries']} entries in force")
        if out.get("not_runtime_entries"):
            print(f"not runtime entries (edit the source to remove them): {', '.join(out['not_runtime_entries'])}")
        return 0
    payload = {"list": args.list, "add": args.add, "remove": args.remove, "reason": args.reason}
    return run(client, args, "list.update", payload, render)


def register_cache(sub) -> None:
    p = sub.add_parser("cache", help="the DNS answer cache: show counters (or a name's entries), flush")
    p.add_argument("action", choices=("show", "flush"))
    p.add_argument("name", nargs="?", help="show: the entries of this name; flush: this name and the "
                   "names below it (default: everything)")
    p.set_defaults(func=cmd_cache)


def cmd_cache(args, client) -> int:
    payload = {"name": args.name} if args.name else {}
    if args.action == "flush":
        def render_flush(out):
            what = f"{out['name']} and below" if out["name"] else "everything"
            print(f"flushed {what}: {out['flushed']} entries"
                  + ("" if out["workers_confirmed"] else " (some workers did not confirm)"))
            return 0
        return run(client, args, "cache.flush", payload, render_flush)

    def render(out):
        if not out["enabled"]:
            print("answer cache: off (dns.cache.enabled: false)")
        t = out["total"]
        print(f"entries {t.get('entries', 0)}  bytes {t.get('bytes', 0)}  hits {t.get('hits', 0)}  "
              f"misses {t.get('misses', 0)}  stale {t.get('stale_answers', 0)}  "
              f"prefetches {t.get('prefetches', 0)}  evictions {t.get('evictions', 0)}")
        if len(out["processes"]) > 1:
            for p in out["processes"]:
                print(f"  worker {p['worker']}: entries {p.get('entries', 0)} hits {p.get('hits', 0)}")
        for e in out.get("entries", []):
            flags = " ".join(f for f in ("rd", "cd", "ad", "do") if e[f])
            print(f"{out['name']}  type {e['type']}  {e['rcode']}  answers {e['answers']}  ttl {e['ttl_left']}/"
                  f"{e['ttl']}{'  stale ' + str(e['stale_for']) + 's' if e['stale_for'] else ''}  "
                  f"edns {e['udp_size'] or 'no'}  [{flags}]{'  cname ' + ','.join(e['cnames']) if e['cnames'] else ''}")
        if "entries" in out and not out["entries"]:
            print(f"nothing cached for {out['name']} (in this process)")
        return 0
    return run(client, args, "cache.show", payload, render)
