"""Every clock read in the daemon goes through nocpolicy/clock.py (ast check of the source).

The hot DNS path may read ``time.perf_counter``/``time.monotonic`` directly (see the
docstring of clock.py); nothing anywhere else reads the time by itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "daemon" / "nocpolicy"
HOT_DNS_PATH = {"dns/engine.py", "dns/server.py", "dns/tcp.py", "dns/mmsg.py", "dns/upstream.py"}
HOT_ALLOWED = {"time.perf_counter", "time.monotonic", "perf_counter", "monotonic", "loop.time"}
TIME_FUNCS = {"time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "localtime",
              "gmtime", "ctime"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    return ""


def clock_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every direct read of a clock: time.time(), datetime.now(), loop.time(), ..."""
    from_time = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and n.module == "time" for a in n.names if a.name in TIME_FUNCS}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        parts = name.split(".")
        if parts[0] == "time" and len(parts) == 2 and parts[1] in TIME_FUNCS:
            found.append((node.lineno, name))
        elif len(parts) == 1 and name in from_time:
            found.append((node.lineno, f"time.{name}"))
        elif parts[-1] in ("now", "utcnow", "today") and any(p in ("datetime", "date", "dt") for p in parts[:-1]):
            found.append((node.lineno, name))
        elif parts[-1] == "time" and len(parts) >= 2 and "loop" in parts[-2]:
            found.append((node.lineno, name))
    return found


def test_the_checker_finds_every_kind_of_read():
    src = ("import time\nimport datetime as dt\nfrom time import monotonic as m\n"
           "a = time.time()\nb = dt.datetime.now(dt.UTC)\nc = m()\nd = loop.time()\ne = self.loop.time()\n"
           "f = dt.date.today()\ng = datetime.utcnow()\nh = time.sleep(1)\n")
    assert sorted(w for _, w in clock_reads(ast.parse(src))) == sorted([
        "time.time", "dt.datetime.now", "time.m", "loop.time", "self.loop.time", "dt.date.today",
        "datetime.utcnow"])


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py")))
def test_no_clock_read_outside_clock_py(path):
    if path == "clock.py":
        return
    reads = clock_reads(ast.parse((ROOT / path).read_text(), path))
    if path in HOT_DNS_PATH:
        reads = [(line, what) for line, what in reads if what not in HOT_ALLOWED]
    assert not reads, f"{path}: read the time through nocpolicy.clock: " + \
        ", ".join(f"line {line}: {what}()" for line, what in reads)
