"""The customer self-service page (Art. 45): an aiohttp application with Jinja2 templates.

Served on its own listener, off until configured (``--customer-listen``), meant to sit behind
the ISP's reverse proxy. Sign-in is a signed, expiring link from the member portal
(:mod:`.customerlinks`); it opens a server-side session whose cookie is HttpOnly,
SameSite=Strict (and Secure under TLS). Every form carries the session's CSRF token and the
session's customer id: a token that does not match, or a form for another customer, changes
nothing. Pages are server-rendered (no JavaScript), in Japanese and English.

The page knows nothing of the areas: it calls the daemon's commands (``consent.show``,
``consent.set``, ``detections``) through the :data:`Dispatch` it is handed in app.py, as the
actor ``portal`` on the channel ``portal``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from .customerlinks import LinkRefused, verify
from .customertext import LANGS, TEXT, pick_lang

log = logging.getLogger(__name__)

Dispatch = Callable[[str, dict], Awaitable[dict]]      # (command, args) -> result; raises on refusal
COOKIE = "nocp_customer"
SESSION_TTL = 1800            # seconds a session lives (absolute)
MAX_SESSIONS = 10_000
MAX_CHANGES = 30              # consent changes per session
MAX_FORM = 4096
TEMPLATES = Path(__file__).parent / "templates"
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'; base-uri 'none'"}


@dataclass
class Session:
    customer: str
    csrf: str
    expires: float
    lang: str | None = None
    changes: int = 0
    done: str | None = field(default=None)      # the last change, shown once


class Sessions:
    """Server-side sessions, bounded (the oldest go first) and expiring."""

    def __init__(self, now: Callable[[], float]):
        self.now = now
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def open(self, customer: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        s = Session(customer, secrets.token_urlsafe(32), self.now() + SESSION_TTL)
        self._by_id[sid] = s
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        s = self._by_id.get(sid) if sid else None
        if s is not None and s.expires <= self.now():
            del self._by_id[sid]
            return None
        return s

    def close(self, sid: str | None) -> None:
        self._by_id.pop(sid or "", None)

    def __len__(self) -> int:
        return len(self._by_id)


def templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined)


class CustomerPage:
    def __init__(self, key: bytes, dispatch: Dispatch, *, tls: bool = False, now: Callable[[], float] = time.time,
                 tz: Callable[[], str] = lambda: "Asia/Tokyo"):
        self.key, self.dispatch, self.tls, self.now, self.tz = key, dispatch, tls, now, tz
        self.sessions = Sessions(now)
        self.env = templates()
        self.refused = {"invalid": 0, "expired": 0, "csrf": 0, "session": 0, "other-customer": 0}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FORM)
        app.router.add_get("/login", self.login)
        app.router.add_get("/", self.page)
        app.router.add_post("/consent", self.consent)
        app.router.add_post("/logout", self.logout)
        return app

    # -- rendering -----------------------------------------------------------------------

    def render(self, name: str, lang: str, status: int = 200, **values) -> web.Response:
        body = self.env.get_template(name).render(lang=lang, t=TEXT[lang], **values)
        return web.Response(status=status, text=body, content_type="text/html", charset="utf-8", headers=HEADERS)

    def refuse(self, request: web.Request, reason: str, key: str, status: int = 403) -> web.Response:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        lang = pick_lang(request.query.get("lang"), None, request.headers.get("Accept-Language"))
        return self.render("customer_error.html", lang, status, message=TEXT[lang][key])

    # -- routes --------------------------------------------------------------------------

    async def login(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            cid = verify(self.key, q.get("customer"), q.get("expires"), q.get("sig"), self.now())
            await self.dispatch("consent.show", {"customer": cid})        # a customer we know
        except LinkRefused as exc:
            log.info("customer page: link refused (%s)", exc)
            return self.refuse(request, exc.reason, f"err_{exc.reason}")
        except Exception as exc:          # unknown customer: the same answer as a bad link
            log.info("customer page: link for an unknown customer refused (%s)", exc)
            return self.refuse(request, "invalid", "err_invalid")
        sid, s = self.sessions.open(cid)
        s.lang = pick_lang(q.get("lang"), None, request.headers.get("Accept-Language"))
        resp = self.render("customer_signedin.html", s.lang)
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=self.tls, path="/",
                        max_age=SESSION_TTL)
        return resp

    def _session(self, request: web.Request) -> tuple[str | None, Session | None]:
        sid = request.cookies.get(COOKIE)
        return sid, self.sessions.get(sid)

    async def page(self, request: web.Request) -> web.Response:
        _sid, s = self._session(request)
        if s is None:
            return self.refuse(request, "session", "err_session", 401)
        s.lang = pick_lang(request.query.get("lang"), s.lang, request.headers.get("Accept-Language"))
        shown = await self.dispatch("consent.show", {"customer": s.customer})
        blocked = await self._blocked(s.customer)
        done, s.done = s.done, None
        return self.render("customer_page.html", s.lang, customer=s.customer, csrf=s.csrf,
                           purposes=shown["purposes"], blocked=blocked, done=done,
                           other=next(x for x in LANGS if x != s.lang))

    async def _blocked(self, cid: str) -> list[dict]:
        rows = (await self.dispatch("detections", {"customer": cid, "since": "14d", "limit": 10_000}))
        counts: dict[tuple[str, str], int] = {}
        zone = ZoneInfo(self.tz())
        for r in rows.get("detections", []):
            k = (dt.datetime.fromisoformat(str(r["ts"])).astimezone(zone).date().isoformat(), r["list"])
            counts[k] = counts.get(k, 0) + int(r.get("count") or 1)
        return [{"day": d, "list": lst, "count": n} for (d, lst), n in sorted(counts.items(), reverse=True)]

    async def consent(self, request: web.Request) -> web.Response:
        sid, s = self._session(request)
        if s is None:
            return self.refuse(request, "session", "err_session", 401)
        form = await request.post()
        if not hmac.compare_digest(str(form.get("csrf", "")), s.csrf):
            log.warning("customer page: form without its CSRF token refused")
            return self.refuse(request, "csrf", "err_csrf")
        if form.get("customer") != s.customer:
            log.warning("customer page: a form for another customer refused (session of %s)", s.customer)
            return self.refuse(request, "other-customer", "err_other")
        purpose, on = str(form.get("purpose", "")), form.get("on")
        if purpose not in TEXT["en"]["purposes"] or on not in ("on", "off"):
            return self.refuse(request, "invalid", "err_csrf", 400)
        if s.changes >= MAX_CHANGES:
            return self.refuse(request, "busy", "err_busy", 429)
        s.changes += 1
        t = TEXT[s.lang or "ja"]
        title, words = t["purposes"][purpose]
        try:
            await self.dispatch("consent.set", {"customer": s.customer, "purpose": purpose, "on": on == "on",
                                                "wording": f"[{s.lang}] {title}: {words}"})
        except Exception as exc:         # e.g. the customer left the policy meanwhile: say so, change nothing
            log.warning("customer page: consent change refused: %s", exc)
            return self.refuse(request, "invalid", "err_session", 409)
        s.done = t["changed"].format(purpose=title, state=t[on])
        raise web.HTTPSeeOther("./", headers=HEADERS)

    async def logout(self, request: web.Request) -> web.Response:
        sid, s = self._session(request)
        if s is not None:
            form = await request.post()
            if not hmac.compare_digest(str(form.get("csrf", "")), s.csrf):
                return self.refuse(request, "csrf", "err_csrf")
            self.sessions.close(sid)
        lang = (s.lang if s else None) or "ja"
        resp = self.render("customer_error.html", lang, message=TEXT[lang]["signed_out"])
        resp.del_cookie(COOKIE, path="/")
        return resp
