"""Notices POSTed to a contact's webhook (a real HTTP server on 127.0.0.1), with retries."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import icalendar
import pytest

from test_maintenance_smtp import T0, Harness, until, window


class HookServer:
    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(503)
                else:
                    outer.requests.append({"path": self.path, "key": self.headers["Idempotency-Key"],
                                           "body": json.loads(body)})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/noc-hook"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("enabled", [True, False])
async def test_webhook_notice_with_retry(tmp_path, enabled):
    with HookServer(fail_first=1) as hook:
        h = Harness(tmp_path, None)
        if enabled:
            yaml = h.dir / "maintenance.yaml"
            yaml.write_text(yaml.read_text() + "  webhooks: true\n")
            from nocpolicy.policy.load import load_policy
            h.policy = load_policy(h.dir)
        await h.start()
        try:
            await h.cmd("contact.set", customer="c1002", email="noc@sakura-design.example", webhook=hook.url)
            await h.cmd("maintenance.add", **window("mw-h", "2026-01-20T01:00", "2026-01-20T05:00",
                                                    scope={"customers": ["c1002"]}))
            if not enabled:     # off by default: no outbound HTTP to customer-supplied URLs
                rows = (await h.cmd("notices"))["notices"]
                assert [r["webhook_state"] for r in rows] == [None]
                assert h.store.one("SELECT COUNT(*) n FROM mw_hook")["n"] == 0
                return

            def state():
                return h.store.one("SELECT * FROM mw_hook")
            await until(lambda: state()["attempts"] == 1, what="first webhook attempt")
            assert state()["state"] == "pending" and state()["status"] == 503
            assert dt.datetime.fromisoformat(state()["next_attempt"]) == T0 + dt.timedelta(seconds=30)
            h.clock.advance(30)
            await until(lambda: state()["state"] == "sent", what="webhook retried")
            assert h.metric("nocpolicy_notice_webhooks_total", result="retry") == 1
            assert h.metric("nocpolicy_notice_webhooks_total", result="sent") == 1
            [req] = hook.requests
            body = req["body"]
            assert req["key"] == body["message_id"] == "<mw-h.notice.0.c1002@localhost>"
            assert (body["maintenance_id"], body["account"], body["status"], body["sequence"]) == \
                ("mw-h", "c1002", "CONFIRMED", 0)
            ev = icalendar.Calendar.from_ical(body["icalendar"]).walk("VEVENT")[0]
            assert str(ev["X-MAINTNOTE-MAINTENANCE-ID"]) == "mw-h"
            # no SMTP here: the e-mail waits in the outbox while the webhook has been delivered
            [row] = (await h.cmd("notices"))["notices"]
            assert (row["state"], row["webhook_state"]) == ("pending", "sent")
        finally:
            await h.stop()
