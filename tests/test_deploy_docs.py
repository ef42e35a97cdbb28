"""docs/operations.md stays true: every nocpolicyctl/nocpolicyd command line it shows is
accepted by the real argument parsers, every file it names under deploy/ exists, and
its links resolve."""

from __future__ import annotations

import datetime as dt
import json
import re
import shlex

import pytest

from helpers import REPO, DaemonProcess

OPS = REPO / "docs" / "operations.md"


def code_lines(section: str | None = None) -> list[str]:
    """Shell lines from ```sh blocks (of one ## section), continuation lines joined."""
    out, in_block, buf = [], False, ""
    text = OPS.read_text()
    if section:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = line.strip() == "```sh" if not in_block else False
            continue
        if not in_block:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def commands(program: str, section: str | None = None) -> list[list[str]]:
    """Every invocation of program in the code blocks, as argv after the program name."""
    found = []
    for line in code_lines(section):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        parts, cur = [], []
        for tok in lexer:
            if tok in (";", "&&", "||", "|", "&"):
                parts.append(cur)
                cur = []
            else:
                cur.append(tok)
        parts.append(cur)
        for words in parts:
            if words[:1] == ["for"]:
                continue  # a loop over names, not a command
            for i, w in enumerate(words):
                nxt = words[i + 1].rsplit("/", 1)[-1] if i + 1 < len(words) else ""
                # `docker compose exec nocpolicyd nocpolicyctl ...`: the service, then the program
                if w.rsplit("/", 1)[-1] == program and nxt not in ("nocpolicyd", "nocpolicyctl"):
                    argv = [re.sub(r"<[^>]+>", "x", a) for a in words[i + 1:]]
                    found.append(argv)
                    break
    return found


def test_every_nocpolicyctl_example_parses():
    from nocpolicy.cli import build_parser
    examples = commands("nocpolicyctl")
    assert len(examples) > 20
    verbs = set()
    for argv in examples:
        # The alias in the guide adds --state-dir; the parser accepts it either way.
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"docs/operations.md: `nocpolicyctl {' '.join(argv)}` is rejected by nocpolicyctl")
        verbs.add(ns.command)
    assert {"check", "status", "reload", "audit", "optout", "explain", "emergency", "maintenance",
            "notices", "contact"} <= verbs


def test_every_nocpolicyd_example_parses():
    from nocpolicy.options import parse_options
    for argv in commands("nocpolicyd"):
        try:
            parse_options(argv)
        except SystemExit:
            pytest.fail(f"docs/operations.md: `nocpolicyd {' '.join(argv)}` is rejected")


def test_deploy_files_named_in_the_guide_exist():
    text = OPS.read_text()
    named = set(re.findall(r"deploy/[A-Za-z0-9_./-]+[A-Za-z0-9_]", text))
    assert len(named) > 10
    for path in sorted(named):
        assert (REPO / path).exists(), f"docs/operations.md names {path}, which does not exist"


def test_links_resolve():
    text = OPS.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (OPS.parent / path).exists(), f"link to {target} does not resolve"
        elif anchor:
            assert anchor in anchors, f"link to #{anchor}: no such heading"


def test_daily_tasks_run_against_a_real_daemon(tmp_path):
    """The "Daily tasks" examples, in order, against a real daemon (no SMTP, qos plan-only
    here). Dates in the examples are moved into the future, keeping their shape; <id> is the
    window the maintenance example created."""
    d = DaemonProcess(tmp_path).start()
    try:
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=40)
        window = None
        ran = []
        for argv in commands("nocpolicyctl", "Daily tasks"):
            moved = []
            for a in argv:
                if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", a):
                    base = soon if argv[:2] == ["emergency", "declare"] else later
                    a = base.strftime("%Y-%m-%dT") + a[11:]
                moved.append(a)
            if "x" in moved and window:
                moved[moved.index("x")] = window
            res = d.ctl(*moved)
            assert res.returncode == 0, f"nocpolicyctl {' '.join(moved)} -> {res.returncode}\n{res.stdout}{res.stderr}"
            ran.append(moved[0])
            if moved[:2] == ["maintenance", "add"]:
                listed = d.ctl_json("maintenance", "list")
                window = re.search(r'"id": "([^"]+)"', json.dumps(listed)).group(1)
        assert {"optout", "explain", "detections", "emergency", "usage", "maintenance", "notices",
                "contact", "audit"} <= set(ran)
    finally:
        d.stop()
