"""``python -m nocpolicy.worker``: one extra DNS worker process (``nocpolicyd --workers N``).

The worker is the daemon itself -- the same start-up, reload and stop code
(:class:`nocpolicy.app.Daemon`) -- running only the subscribers area and the DNS
guard, as a secondary process: no admin API or metrics listener, no policy records
in the store (the main process writes them). The main process starts it (see
dns/workers.py) and talks to it over stdin/stdout (dns/link.py).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import sys

from .app import SWITCH_INTERVAL, Daemon
from .dns.component import DnsGuard
from .logs import setup_logging
from .loop import loop_factory
from .options import Options, _hostport


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nocpolicy-dns-worker")
    p.add_argument("--policies", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--dns-listen", type=_hostport, action="append", required=True)
    p.add_argument("--index", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dns-io", choices=("auto", "native", "batched", "asyncio"), default="auto")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    setup_logging("text", ns.log_level)
    sys.setswitchinterval(SWITCH_INTERVAL)        # as the main process (app.main says why)
    faulthandler.enable()
    logging.getLogger().handlers[0].setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s worker{ns.index} %(name)s: %(message)s"))
    opts = Options(policies=ns.policies, state_dir=ns.state_dir, dns_listen=ns.dns_listen,
                   workers=ns.workers, dns_io=ns.dns_io, log_level=ns.log_level, watch=False,
                   extra={"dns_worker": True})
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(Daemon(opts, types=[DnsGuard], primary=False).run())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
