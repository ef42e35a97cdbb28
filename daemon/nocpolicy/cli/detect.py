"""nocpolicyctl detect status: passive detection inputs, active blocks, publication errors."""

from __future__ import annotations

import datetime as dt

from .client import run


def register(sub) -> None:
    p = sub.add_parser("detect", help="passive C&C detection (dnstap, capture, query logs)")
    dsub = p.add_subparsers(dest="detect_command", metavar="SUBCOMMAND", required=True)
    s = dsub.add_parser("status", help="inputs, lookups observed, active RPZ/nftables blocks")
    s.add_argument("--blocks", action="store_true", help="list every active name and address block")
    s.set_defaults(func=cmd_status)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_status(args, client) -> int:
    def render(out):
        print(f"detect    {out['state']}" + (f"  {out['detail']}" if out.get("detail") else ""))
        print(f"enforce   {', '.join(out.get('enforce') or []) or 'none'}; blocks last "
              f"{int(out.get('block_for_s', 0))}s after the last lookup")
        inputs = out.get("inputs", {})
        obs = inputs.get("observed", {})
        print("observed  " + ", ".join(f"{k} {v}" for k, v in obs.items()))
        tap = inputs.get("dnstap")
        if tap:
            print(f"dnstap    {tap['socket']}: {tap['connections']} connected, {tap['frames']} frames, "
                  f"{tap['errors']} errors")
        for c in inputs.get("capture", []):
            print(f"capture   {c['interface']}: {c['frames']} frames, {c['kernel_drops']} dropped by the kernel")
        for lf in inputs.get("logfiles", []):
            print(f"logfile   {lf['path']} ({lf['format']}): {lf['lines']} lines, {lf['unparsed']} unparsed, "
                  f"{lf['rotations']} rotations, {lf['truncations']} truncations")
        b = out.get("blocks", {})
        print(f"blocks    {b.get('names', 0)} names (RPZ), {b.get('addresses', 0)} addresses (nftables)"
              + (f"; RPZ in {out['rpz_directory']}" if out.get("rpz_directory") else ""))
        for k, v in (out.get("last_errors") or {}).items():
            print(f"error     {k}: {v}")
        for n in out.get("names", []):
            print(f"  name    {n['entry']:<40} {n['kind']:<8} {n['class']:<9} {n['list']:<16} until {_when(n['expires'])}")
        for a in out.get("addresses", []):
            print(f"  address {a['address']:<40} {a['customer']:<8} {a['class']:<9} {a['list']:<16} until {_when(a['expires'])}")
        return 0
    return run(client, args, "detect.status", {"blocks": bool(args.blocks)}, render)
