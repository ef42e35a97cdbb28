"""nocpolicyctl: the operator CLI. Talks to the daemon's admin API; `check` works offline.

Exit codes: 0 ok, 1 refused or failed (policy errors, command errors),
2 usage error, 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import sys

from . import core, detect, dns, fleet, maintenance, qos, sessions, suspension

# Each module adds its sub-commands: register(subparsers) -> sets func=handler(args, client).
MODULES = [core, dns, detect, qos, maintenance, fleet, sessions, suspension]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ..options import DEFAULT_ADMIN
    p = argparse.ArgumentParser(prog="nocpolicyctl", description="nocpolicy operator CLI")
    p.add_argument("--version", action="version", version=f"nocpolicyctl {__version__}")
    p.add_argument("--admin", metavar="ADDR:PORT", default=DEFAULT_ADMIN,
                   help=f"the daemon's admin API (default {DEFAULT_ADMIN})")
    p.add_argument("--state-dir", metavar="DIR", default="./state",
                   help="where the daemon keeps admin.token (default ./state)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for m in MODULES:
        m.register(sub)
    _accept_json_anywhere(p)
    return p


def _accept_json_anywhere(parser: argparse.ArgumentParser) -> None:
    """`nocpolicyctl status --json` works as well as `nocpolicyctl --json status`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if not any("--json" in a.option_strings for a in child._actions):
                    child.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                       help="print the raw JSON answer")
                _accept_json_anywhere(child)


def main(argv: list[str] | None = None) -> int:
    from .client import AdminClient, Unreachable
    parser = build_parser()
    args = parser.parse_args(argv)
    client = AdminClient(args.admin, args.state_dir)
    try:
        return args.func(args, client) or 0
    except Unreachable as exc:
        print(f"nocpolicyctl: {exc}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        return 0
