"""Whatever an operator writes, validation answers with problems, never a crash."""

from __future__ import annotations

import datetime as dt

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import POLICIES
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy

ORIGINAL = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in POLICIES.glob("*.yaml")}
# Sections the example leaves empty, so that their keys are fuzzed too.
ORIGINAL["zz-extra.yaml"] = {
    "maintenance": {
        "notice": {"planned_days": 14, "reminder_before": "24h", "languages": ["ja", "en"]},
        "smtp": {"host": "127.0.0.1", "port": 2525, "from": "noc@isp.example", "timeout": "10s"},
        "windows": [{"id": "w1", "kind": "planned", "start": "2026-12-20T01:00:00+09:00",
                     "end": "2026-12-20T05:00:00+09:00", "reason": {"ja": "工事", "en": "works"},
                     "impact": "OUTAGE", "scope": {"customers": ["c1001"], "tags": ["x"],
                                                   "prefixes": ["192.0.2.0/26"]}}],
    },
    "detect": {"logfiles": [{"path": "/var/log/unbound.log", "format": "unbound"}],
               "capture": [{"interface": "eth0", "port": 53}], "enforce": ["events"],
               "block_for": "24h", "rpz": {"ttl": 60}, "nft": {"table": "t1"}},
}
ORIGINAL["maintenance.yaml"].pop("maintenance")   # one maintenance section only: the one above

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.dates(), st.datetimes(timezones=st.just(dt.UTC)),
    st.sampled_from(["1gbit", "5m", "40%", "192.0.2.0/24", "::/0", "c1001", "*", "", "-1", "1e9mbit"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def paths(node, prefix=()):
    """Every (container, key) pair in a plain YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from paths(v, prefix + (i,))


ALL_PATHS = [(name, p) for name, doc in ORIGINAL.items() for p in paths(doc)]


def replaced(doc, path, value):
    import copy
    out = copy.deepcopy(doc)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(ALL_PATHS), values), min_size=1, max_size=3))
def test_random_values_anywhere_never_crash(tmp_path_factory, edits):
    d = tmp_path_factory.mktemp("fuzz") / "policies"
    d.mkdir()
    (d / "lists").mkdir()
    for f in (POLICIES / "lists").iterdir():
        (d / "lists" / f.name).write_bytes(f.read_bytes())
    docs = dict(ORIGINAL)
    for (name, path), value in edits:
        try:
            docs[name] = replaced(docs[name], path, value)
        except (KeyError, IndexError, TypeError):
            continue   # an earlier edit removed this path
    for name, doc in docs.items():
        (d / name).write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    try:
        load_policy(d)
    except PolicyInvalid as exc:
        assert exc.problems
        for p in exc.problems:
            assert str(p).startswith(str(d)), p
            assert p.loc.line >= 1, p


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_arbitrary_text_never_crashes(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("fuzz") / "policies"
    d.mkdir()
    (d / "x.yaml").write_text(text, encoding="utf-8")
    try:
        load_policy(d)
    except PolicyInvalid as exc:
        assert exc.problems
