"""Hostile list sources (issue 14): a gzip bomb, a server that drips bytes forever, a
redirect chain and an oversized list are refused, the list in force is kept, and the
reason is in the list's state (``nocpolicyctl dns lists``)."""

from __future__ import annotations

import gzip
import http.server
import threading
import time

import pytest

from nocpolicy.dns.lists import suffixes
from nocpolicy.dns.sources import ListManager, SourceError, gunzip
from nocpolicy.policy.dnsconf import BlockList
from nocpolicy.store import Store

GOOD = b"good-a.example\ngood-b.example\n"


def _bomb(expanded: int) -> bytes:
    line = b"bomb.example\n"
    return gzip.compress(line * (expanded // len(line)), compresslevel=9)


class _Handler(http.server.BaseHTTPRequestHandler):
    bomb = b""
    stop = threading.Event()

    def do_GET(self):
        if self.path == "/good.txt":
            self._send(GOOD)
        elif self.path == "/bomb.txt.gz":
            self._send(self.bomb)
        elif self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/good.txt" if n == 0 else f"/hop/{n - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/drip.txt":
            self.send_response(200)
            self.end_headers()
            # one name every 50 ms, for up to a minute: every read succeeds, the whole never ends
            deadline = time.monotonic() + 60
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    self.wfile.write(b"d.example\n")
                    self.wfile.flush()
                except OSError:
                    return
                self.stop.wait(0.05)
        else:
            self.send_error(404)

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    _Handler.stop.clear()
    _Handler.bomb = _bomb(64 * 2**20)     # ~64 MiB of names from ~65 KB, as in the issue
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    _Handler.stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def mgr(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    m = ListManager(store, str(tmp_path / "state"))
    yield m
    m.close()
    store.close()


def _bl(source, **kw):
    return BlockList(id="feed", cls="security", format="domains", source=source, **kw)


async def _load(mgr, bl, pol="."):
    lst = await mgr.build(bl, pol)
    mgr.adopt([bl], {bl.id: lst})
    return lst, mgr.states[bl.id]


async def _good_then(mgr, server, bad: BlockList, pol="."):
    """The good list is in force, then the same list id points at ``bad``."""
    good, st = await _load(mgr, BlockList(**{**bad.__dict__, "source": server + "/good.txt"}))
    assert len(good.index) == 2 and st.last_error is None
    lst, st = await _load(mgr, bad, pol)
    assert lst.match(suffixes("good-a.example")), "the list in force is kept"
    assert not lst.match(suffixes("bomb.example"))
    return st


async def test_gzip_bomb_from_http_is_refused_at_max_size(mgr, server):
    assert len(_Handler.bomb) < 200_000
    st = await _good_then(mgr, server, _bl(server + "/bomb.txt.gz", max_size=2**20))
    assert "max_size" in st.last_error and "gunzipped" in st.last_error and st.failures == 1


def test_gunzip_stops_at_the_cap_without_expanding_the_rest():
    bomb = _bomb(64 * 2**20)
    with pytest.raises(SourceError, match="max_size"):
        gunzip(bomb, 2**20)
    assert gunzip(gzip.compress(GOOD) + gzip.compress(b"x.example\n"), 1000) == GOOD + b"x.example\n"
    with pytest.raises(SourceError, match="truncated"):
        gunzip(gzip.compress(GOOD * 100)[:-30], 10**6)


async def test_a_source_that_never_ends_meets_the_fetch_deadline(mgr, server):
    t0 = time.monotonic()
    st = await _good_then(mgr, server, _bl(server + "/drip.txt", fetch_timeout=1.0))
    assert "fetch_timeout" in st.last_error
    assert time.monotonic() - t0 < 45, "stopped by the deadline, not by the server giving up"


async def test_redirects_are_limited(mgr, server):
    lst, st = await _load(mgr, _bl(server + "/hop/2"))
    assert len(lst.index) == 2 and st.last_error is None, "a few hops are fine"
    st = await _good_then(mgr, server, _bl(server + "/hop/6"))
    assert "redirects" in st.last_error


async def test_a_list_over_max_entries_is_refused(mgr, server, tmp_path):
    (tmp_path / "big.txt").write_text("".join(f"n{i}.example\n" for i in range(101)))
    st = await _good_then(mgr, server, _bl("big.txt", max_entries=100), str(tmp_path))
    assert "max_entries" in st.last_error and st.failures == 1
    lst, st = await _load(mgr, _bl("big.txt", max_entries=101), str(tmp_path))
    assert st.last_error is None and len(lst.index) == 101
