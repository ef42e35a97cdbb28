"""List reloads that never hold up the event loop: parse in a child process, build on the loop.

A reload of the 937k-name list while the daemon serves used to parse in a thread of the
daemon. On a machine with more runnable threads than CPUs that thread is preempted while
it holds the GIL, and the event loop waits for it: answers took 50-200 ms during the
parse (bench/README.md, "Reload stalls"). Now:

* a child process (``python -m nocpolicy.dns.listbuild FORMAT FILE``) decodes, validates
  and parses the list -- nearly all of the CPU of a reload, on its own interpreter and
  GIL -- and writes the accepted entries, one a line: a JSON header (the parse report),
  then the subtree names, an empty line, the exact entries (``name<TAB>action``), an
  empty line, the wildcard entries;
* the event loop reads that output and inserts the names into the new index itself, in
  slices of at most :data:`BUDGET` seconds with a pass of the loop between slices (the
  index's shards hash with this process's string hash, which a child cannot compute);
* the replaced index is emptied on the loop the same way (:func:`free_on_loop`), and so
  are the engine's tables of answers judged under the old lists (:func:`empty_on_loop`:
  up to 100,000 entries per customer, dropped at once they held the loop ~10 ms per
  100,000).

So no thread of the daemon holds the GIL for the reload work: the loop thread does it,
a slice at a time, between answers. And the child, sharing no lock with the daemon, runs
at a lower CPU priority (nice +10) without risk of stalling it: on a busy machine the
reload takes longer rather than the answers. Start-up (nothing served yet) parses in a
thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from ..clock import monotonic
from .formats import parse
from .lists import DomainIndex

BUDGET = 0.002            # seconds of loop time per slice of inserting or freeing
# a smaller list is parsed in the list thread even while serving: done in milliseconds, it
# cannot hold the loop, and a child (a Python start-up and imports) would cost far more
CHILD_MIN_BYTES = 1 << 20
READ = 1 << 16            # bytes read from the child per call
CHILD_NICE = 10           # the child holds no lock the daemon needs: it may wait for the CPU


class ChildFailed(Exception):
    """The child could not parse the list (it crashed, was killed, or wrote nonsense)."""


# -- the child -----------------------------------------------------------------------------

def _lines(idx: DomainIndex):
    yield from idx.subtree
    yield ""
    for table in (idx.exact, idx.wild):
        for name, action in table.items():
            yield f"{name}\t{action or ''}"
        if table is idx.exact:
            yield ""


def main(argv: list[str]) -> int:
    fmt, path = argv[1], argv[2]
    os.nice(CHILD_NICE)
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    idx, rep = parse(fmt, text)
    del text
    out = sys.stdout.buffer
    out.write(json.dumps(rep.as_dict()).encode() + b"\n")
    batch: list[str] = []
    for line in _lines(idx):
        batch.append(line)
        if len(batch) == 4096:
            out.write(("\n".join(batch) + "\n").encode())
            batch.clear()
    out.write(("\n".join(batch) + "\n").encode() if batch else b"")
    out.flush()
    return 0


# -- the daemon side -----------------------------------------------------------------------

class _Builder:
    """Turns the child's output into a DomainIndex, a slice at a time."""

    def __init__(self) -> None:
        self.index = DomainIndex()
        self.report: dict | None = None
        self.section = 0                    # 0 subtree, 1 exact, 2 wild
        self.rest = b""

    def split(self, chunk: bytes) -> list[str]:
        data = self.rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self.rest = data
            return []
        self.rest = data[cut + 1:]
        try:
            lines = data[:cut].decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise ChildFailed("the list parser wrote a non-ASCII name") from None
        if self.report is None:
            self.report = json.loads(lines.pop(0))
        return lines

    def feed(self, lines: list[str]) -> None:
        """Insert ``lines`` (a slice: a few hundred)."""
        if self.section == 0:
            k = lines.index("") if "" in lines else len(lines)
            self.index.subtree.update_many(lines[:k])
            if k == len(lines):
                return
            self.section, lines = 1, lines[k + 1:]
        for line in lines:
            if not line:
                self.section += 1
                continue
            name, _, action = line.partition("\t")
            (self.index.exact if self.section == 1 else self.index.wild)[name] = action or None


async def _sliced(items: list, fn, step: int = 256, budget: float = BUDGET) -> None:
    """``fn(items[i:i+step])`` for every slice, yielding to the loop every ``budget`` s."""
    t0 = monotonic()
    for i in range(0, len(items), step):
        fn(items[i:i + step])
        if monotonic() - t0 > budget:
            await asyncio.sleep(0)
            t0 = monotonic()


def _spawn(fmt: str, path: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(__file__)))]
        + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return subprocess.Popen([sys.executable, "-m", "nocpolicy.dns.listbuild", fmt, path], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def parse_in_child(fmt: str, path: str) -> tuple[DomainIndex, dict]:
    """(index, parse report) of the list file at ``path``, parsed by a child process.

    The child is started, and its output read, from a worker thread: asyncio's own
    subprocess support forks on the loop thread, and forking a daemon holding a big list
    stopped the loop for ~40 ms (subprocess.Popen uses vfork)."""
    try:
        proc = await asyncio.to_thread(_spawn, fmt, path)
    except OSError as exc:
        raise ChildFailed(f"cannot start the list parser: {exc}") from None
    b = _Builder()
    try:
        while chunk := await asyncio.to_thread(proc.stdout.read1, READ):
            await _sliced(b.split(chunk), b.feed)
        err = await asyncio.to_thread(proc.stderr.read, 1 << 16)
        code = await asyncio.to_thread(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        proc.stdout.close()
        proc.stderr.close()
    if code != 0 or b.report is None or b.rest:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {code}"]
        raise ChildFailed(f"the list parser failed: {tail[0]}")
    return b.index, b.report


def _empty(container, n: int) -> None:
    pop = container.popitem
    for _ in range(min(n, len(container))):
        pop()


async def empty_on_loop(containers, budget: float = BUDGET) -> int:
    """Empty dicts on the loop, a slice at a time (no other thread takes the GIL for it);
    returns the number of entries freed."""
    freed = 0
    t0 = monotonic()
    for container in containers:
        while container:
            n = len(container)
            _empty(container, 256)
            freed += n - len(container)
            if monotonic() - t0 > budget:
                await asyncio.sleep(0)
                t0 = monotonic()
    return freed


async def free_on_loop(indexes, budget: float = BUDGET) -> int:
    """Empty replaced list indexes on the loop (see :func:`empty_on_loop`)."""
    freed = 0
    for idx in indexes:
        freed += await empty_on_loop((*idx.subtree.shards, idx.exact, idx.wild), budget)
        idx.subtree.parents = None
    return freed


if __name__ == "__main__":
    sys.exit(main(sys.argv))

