"""The notice page of suspended customers (Art. 25): an aiohttp application answering any Host
and any path with the asking client's own cause, reason, period, how to resolve it and whom
to contact, in Japanese and English.

The DNS guard sends a walled-garden customer's names here, so operating systems' captive-
portal probes (``/generate_204``, ``/hotspot-detect.html``, ``/connecttest.txt``...) land here
too; they get this page with status 200 instead of the answer they expect, which is what
makes Android, Apple and Windows report "sign in to network" and open it. Never cached
(``Cache-Control: no-store``), one request per connection: after a resume the browser's next
request goes to the real site. ``lookup(client address)`` returns the page data (built by
suspension/page.py) or None for a client that is not suspended.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from aiohttp import web

PROBES = ("/generate_204", "/gen_204", "/hotspot-detect.html", "/library/test/success.html",
          "/connecttest.txt", "/ncsi.txt", "/success.txt", "/canonical.html", "/redirect")
HEADERS = {"Cache-Control": "no-store", "Connection": "close", "Content-Language": "ja, en"}


def render(data: dict | None) -> str:
    """The page (pure): escaped HTML in both languages."""
    e = html.escape
    if data is None:
        return ("<!doctype html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>nocpolicy</title></head>"
                "<body><h1>ご利用は制限されていません</h1><p>Your service is not restricted.</p></body></html>")
    ja, en = data["ja"], data["en"]
    allow = "".join(f"<li>{e(n)}</li>" for n in data["allow"])
    return f"""<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>ご利用の停止・制限のお知らせ / Service suspended</title></head>
<body>
<section lang="ja"><h1>ご利用の停止・制限のお知らせ</h1>
<dl><dt>お客様番号</dt><dd id="customer">{e(data['customer'])}</dd>
<dt>事由</dt><dd>{e(ja['cause'])}</dd><dt>理由</dt><dd id="reason">{e(data['reason'])}</dd>
<dt>期間</dt><dd id="period-ja">{e(ja['period'])}</dd><dt>内容</dt><dd>{e(ja['restriction'])}</dd>
<dt>解決方法</dt><dd>{e(ja['resolve'])}</dd><dt>お問い合わせ</dt><dd>{e(ja['contact'])}</dd></dl></section>
<section lang="en"><h1>Your service is suspended or restricted</h1>
<dl><dt>Account</dt><dd>{e(data['customer'])}</dd>
<dt>Cause</dt><dd>{e(en['cause'])}</dd><dt>Reason</dt><dd>{e(data['reason'])}</dd>
<dt>Period</dt><dd id="period-en">{e(en['period'])}</dd><dt>Restriction</dt><dd>{e(en['restriction'])}</dd>
<dt>How to resolve</dt><dd>{e(en['resolve'])}</dd><dt>Contact</dt><dd>{e(en['contact'])}</dd></dl>
<p>Still reachable / ご利用いただけるサイト:</p><ul>{allow}</ul></section>
<footer>{e(data['provider'])}</footer>
</body></html>"""


def notice_app(lookup: Callable[[str], dict | None]) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        host = request.remote or ""
        data = lookup(host)
        return web.Response(text=render(data), content_type="text/html", charset="utf-8", headers=HEADERS)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_route("*", "/{tail:.*}", page)
    return app
