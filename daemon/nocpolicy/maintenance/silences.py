"""Alertmanager silences that follow the windows (v2 API), reconciled idempotently.

Each open window wants one silence per dimension: its affected customers
(``customer=~"c1|c2"``) and, when the scope names nodes, its nodes
(``node=~"edge-1|edge-2"``), from the window start to its end. A silence is
recognised by the first word of its comment, ``nocpolicy:<node>:<window>:<dim>``,
so reconciling never needs our own record of silence ids (a crash between the
POST and a commit cannot create a duplicate) and never touches other silences.
:func:`plan` is pure; :class:`AlertmanagerClient` is the thin HTTP shell.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import NocpolicyError

CREATED_BY = "nocpolicy"


@dataclass(frozen=True)
class Spec:
    key: str
    matchers: tuple[tuple[str, str], ...]       # (label, regex), all isRegex and isEqual
    starts: dt.datetime
    ends: dt.datetime
    comment: str

    def body(self, silence_id: str | None = None) -> dict:
        d = {"matchers": [{"name": n, "value": v, "isRegex": True, "isEqual": True} for n, v in self.matchers],
             "startsAt": _ts(self.starts), "endsAt": _ts(self.ends), "createdBy": CREATED_BY,
             "comment": self.comment}
        if silence_id:
            d["id"] = silence_id
        return d


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _alt(values) -> str:
    return "|".join(re.escape(v) for v in sorted(values))


def prefix(node: str) -> str:
    return f"nocpolicy:{node}:"


def desired(node: str, windows, customers_of, now: dt.datetime) -> list[Spec]:
    """The silences the open windows want (pure). ``customers_of(w)`` resolves a window's customers."""
    out = []
    for w in windows:
        if w.state in ("completed", "cancelled") or w.end <= now:
            continue
        dims = []
        customers = customers_of(w)
        if customers:
            dims.append(("customers", (("customer", _alt(customers)),)))
        if w.scope.nodes:
            dims.append(("nodes", (("node", _alt(w.scope.nodes)),)))
        for dim, matchers in dims:
            key = f"{prefix(node)}{w.id}:{dim}"
            out.append(Spec(key, matchers, w.start, w.end, f"{key} {w.kind} window: {w.reason_en}"))
    return out


def plan(node: str, want: list[Spec], existing: list[dict]) -> list[tuple[str, Spec | None, str | None]]:
    """Actions ("put", spec, id-or-None) / ("expire", None, id) to make Alertmanager match ``want``."""
    mine = {}
    for s in existing:
        key = (s.get("comment") or "").split(" ", 1)[0]
        if key.startswith(prefix(node)) and (s.get("status") or {}).get("state") != "expired":
            mine.setdefault(key, []).append(s)
    actions: list[tuple[str, Spec | None, str | None]] = []
    for spec in want:
        have = mine.pop(spec.key, [])
        keep = next((s for s in have if _same(spec, s)), None)
        if keep is None:
            actions.append(("put", spec, have[0]["id"] if have else None))
            have = have[1:]
        else:
            have = [s for s in have if s is not keep]
        actions.extend(("expire", None, s["id"]) for s in have)          # duplicates
    for silences in mine.values():
        actions.extend(("expire", None, s["id"]) for s in silences)       # windows gone or over
    return actions


def _same(spec: Spec, s: dict) -> bool:
    matchers = tuple((m["name"], m["value"]) for m in s.get("matchers", ()) if m.get("isRegex"))
    try:
        ends = dt.datetime.fromisoformat(s["endsAt"].replace("Z", "+00:00"))
        starts = dt.datetime.fromisoformat(s["startsAt"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return False
    active = (s.get("status") or {}).get("state") == "active"
    return (sorted(matchers) == sorted(spec.matchers) and abs((ends - spec.ends).total_seconds()) < 1
            and (active or abs((starts - spec.starts).total_seconds()) < 1))


class AlertmanagerClient:
    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base, self.timeout = base_url.rstrip("/"), timeout

    def _call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if method == "DELETE" and exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:200]
            raise NocpolicyError(f"alertmanager {method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise NocpolicyError(f"alertmanager {self.base} unreachable: {getattr(exc, 'reason', exc)}") from None

    async def silences(self) -> list[dict]:
        return await asyncio.to_thread(self._call, "GET", "/api/v2/silences") or []

    async def put(self, spec: Spec, silence_id: str | None) -> str:
        out = await asyncio.to_thread(self._call, "POST", "/api/v2/silences", spec.body(silence_id))
        return (out or {}).get("silenceID", "")

    async def expire(self, silence_id: str) -> None:
        await asyncio.to_thread(self._call, "DELETE", f"/api/v2/silence/{silence_id}")


async def reconcile(client: AlertmanagerClient, node: str, want: list[Spec]) -> list[tuple[str, str]]:
    """Apply :func:`plan`; returns what was done as (action, key or id)."""
    done = []
    for action, spec, sid in plan(node, want, await client.silences()):
        if action == "put":
            await client.put(spec, sid)
            done.append(("put", spec.key))
        else:
            await client.expire(sid)
            done.append(("expire", sid))
    return done
