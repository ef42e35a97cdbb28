"""Alertmanager silences follow the windows: created, updated, expired, idempotently (real alertmanager)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import urllib.request

import pytest

from helpers import free_port, wait_for
from nocpolicy.maintenance.silences import Spec, plan
from test_maintenance_smtp import Harness, until, window

AM = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alertmanager(tmp_path):
    if AM is None:
        pytest.skip("prometheus-alertmanager is not installed (tests/run-all.sh installs it)")
    port = free_port()
    cfg = tmp_path / "am.yml"
    cfg.write_text('route: {receiver: "null"}\nreceivers: [{name: "null"}]\n')
    log = open(tmp_path / "am.log", "wb")
    proc = subprocess.Popen([AM, f"--config.file={cfg}", f"--storage.path={tmp_path / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200, timeout=20,
                 what="alertmanager ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def am_silences(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/silences", timeout=5) as r:
        return json.loads(r.read())


def am_post(url: str, body: dict) -> None:
    req = urllib.request.Request(f"{url}/api/v2/silences", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def live(url: str) -> dict[str, dict]:
    return {s["comment"].split(" ", 1)[0]: s for s in am_silences(url) if s["status"]["state"] != "expired"}


def test_plan_is_idempotent_and_leaves_others_alone():
    t = dt.datetime(2026, 1, 20, tzinfo=dt.UTC)
    spec = Spec("nocpolicy:n1:mw:customers", (("customer", "c1"),), t, t + dt.timedelta(hours=1),
                "nocpolicy:n1:mw:customers x")
    same = {"id": "a", "comment": spec.comment, "status": {"state": "pending"}, "startsAt": "2026-01-20T00:00:00.000Z",
            "endsAt": "2026-01-20T01:00:00.000Z", "matchers": [{"name": "customer", "value": "c1", "isRegex": True}]}
    other = dict(same, id="b", comment="nocpolicy:n2:mw:customers")       # another node's
    hand = dict(same, id="c", comment="silenced by hand")
    assert plan("n1", [spec], [same, other, hand]) == []
    assert plan("n1", [], [same, other, hand]) == [("expire", None, "a")]
    moved = dict(same, endsAt="2026-01-20T02:00:00.000Z")
    assert plan("n1", [spec], [moved]) == [("put", spec, "a")]
    assert plan("n1", [spec], [same, dict(same, id="d")]) == [("expire", None, "d")]


async def test_silences_follow_the_window(tmp_path, alertmanager):
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    h = Harness(tmp_path, None, start=now)
    yaml = h.dir / "maintenance.yaml"
    yaml.write_text(yaml.read_text() + f"  alertmanager: {alertmanager}\n")
    from nocpolicy.policy.load import load_policy
    h.policy = load_policy(h.dir)
    await h.start()
    try:
        # someone's own silence must survive everything below
        body = {"matchers": [{"name": "job", "value": "x", "isRegex": False}], "startsAt": now.isoformat(),
                "endsAt": (now + dt.timedelta(days=60)).isoformat(), "createdBy": "ops", "comment": "by hand"}
        am_post(alertmanager, body)

        local = (now + dt.timedelta(days=30)).astimezone(dt.timezone(dt.timedelta(hours=9)))
        start, end = local.strftime("%Y-%m-%dT01:00"), local.strftime("%Y-%m-%dT05:00")
        await h.cmd("maintenance.add", **window("mw-am", start, end,
                                                scope={"tags": ["tokyo-east"], "nodes": ["edge-tokyo-1"]}))
        node = h.policy.settings.node
        await until(lambda: len(live(alertmanager)) == 3, what="two window silences")
        s = live(alertmanager)
        cust = s[f"nocpolicy:{node}:mw-am:customers"]
        assert [(m["name"], m["value"]) for m in cust["matchers"]] == [("customer", "c1001|c1002|c2001")]
        assert s[f"nocpolicy:{node}:mw-am:nodes"]["matchers"][0]["value"] == "edge\\-tokyo\\-1"
        assert cust["startsAt"].startswith(
            local.replace(hour=1, minute=0, second=0).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M"))
        ids = {k: v["id"] for k, v in s.items()}

        # reconciling again changes nothing (idempotent)
        h.comp.poke()
        await until(lambda: h.comp.silence_error == "" and len(am_silences(alertmanager)) == 3)
        assert {k: v["id"] for k, v in live(alertmanager).items()} == ids

        # a shorter window moves the silences' end
        await h.cmd("maintenance.update", id="mw-am", end=local.strftime("%Y-%m-%dT03:00"))
        await until(lambda: live(alertmanager)[f"nocpolicy:{node}:mw-am:customers"]["endsAt"].startswith(
            (local.replace(hour=3, minute=0, second=0)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")),
            what="silence end updated")
        assert len(live(alertmanager)) == 3

        # cancelling expires them; the hand-made one stays
        await h.cmd("maintenance.cancel", id="mw-am")
        await until(lambda: list(live(alertmanager)) == ["by"], what="window silences expired")
    finally:
        await h.stop()
