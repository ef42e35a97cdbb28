"""check, status, reload, audit."""

from __future__ import annotations

import json
import sys

from .client import run


def register(sub) -> None:
    p = sub.add_parser("check", help="validate a policy directory offline (exit 1 on problems)")
    p.add_argument("directory", nargs="?", default="./policies")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("status", help="policy version, load time, components, last reload error")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reload", help="reload the policy directory now")
    p.add_argument("--dry-run", action="store_true", help="show what would change; apply nothing")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("audit", help="recent audit records")
    p.add_argument("--subject", help="only records about this subject (e.g. customer:c1001)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_audit)


def cmd_check(args, client) -> int:
    # imported here: the policy loader is most of nocpolicyctl's start-up, and only `check` needs it
    from ..errors import PolicyInvalid
    from ..policy.load import load_policy
    try:
        policy = load_policy(args.directory)
    except PolicyInvalid as exc:
        if args.json:
            print(json.dumps({"ok": False, "problems": [
                {"file": p.loc.file, "line": p.loc.line, "path": p.path, "reason": p.reason}
                for p in exc.problems]}, ensure_ascii=False, indent=1))
        else:
            for problem in exc.problems:
                print(problem)
        print(f"{len(exc.problems)} problem(s) in {args.directory}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, **policy.summary()}, ensure_ascii=False, indent=1))
    else:
        s = policy.summary()
        print(f"{args.directory}: OK, version {s['version']} ({s['customers']} customers, {s['lists']} lists, "
              f"{s['upstreams']} upstreams, {s['emergency_profiles']} emergency profiles, "
              f"{s['maintenance_windows']} maintenance windows)")
    return 0


def cmd_status(args, client) -> int:
    def render(out):
        d, p = out["daemon"], out["policy"] or {}
        print(f"nocpolicyd {d['version']} pid {d['pid']} node {d['node']} role {d['role']}, up since {d['started_at']}")
        print(f"policy    {p.get('version')} loaded {p.get('loaded_at')} from {d['policies']}")
        lr = out.get("last_reload") or {}
        if lr:
            print(f"last reload {'ok' if lr.get('ok') else 'REFUSED'} ({lr.get('source')}) at {lr.get('at')}"
                  + (f": {lr['summary']}" if lr.get("summary") else ""))
        print("components:")
        for name, st in out["components"].items():
            detail = f"  {st['detail']}" if st.get("detail") else ""
            print(f"  {name:<14} {st['state']:<9} since {st['since']}{detail}")
        err = out.get("last_error")
        if err:
            print(f"last reload error ({err['source']}, {err['at']}):")
            for e in err["errors"]:
                print(f"  {e}")
        return 0
    return run(client, args, "status", {}, render)


def cmd_reload(args, client) -> int:
    def render(out):
        if not out.get("ok"):
            for e in out.get("errors", []):
                print(e)
            print(f"reload refused; still serving policy {out.get('version')}", file=sys.stderr)
            return 1
        if out.get("dry_run"):
            print(f"dry run: policy {out['version']}: {out['summary']}")
            for name, text in (out.get("components") or {}).items():
                print(f"--- {name}")
                print(text.rstrip())
            return 0
        if not out.get("changed"):
            print(f"policy {out['version']} unchanged")
        else:
            print(f"policy {out.get('previous')} -> {out['version']}: {out['summary']}")
        return 0
    return run(client, args, "reload", {"dry_run": bool(args.dry_run)}, render)


def cmd_audit(args, client) -> int:
    def render(out):
        for r in reversed(out["audit"]):
            print(f"{r['ts']}  {r['actor']:<14} {r['action']:<22} {r['subject']}  "
                  f"{json.dumps(r['before'], ensure_ascii=False)} -> {json.dumps(r['after'], ensure_ascii=False)}")
        return 0
    payload = {"limit": args.limit}
    if args.subject:
        payload["subject"] = args.subject
    return run(client, args, "audit", payload, render)
