"""Fleet state snapshots in parts, the pure parts: splitting, the wire, assembling (issue 16)."""

from __future__ import annotations

import json

import pytest

from nocpolicy.fleet.statesplit import Assembler, split
from nocpolicy.fleet.statewire import (
    FLEET,
    MAX_PARTS,
    StateRefused,
    head,
    parse_state,
    stream_topics,
)

KINDS = ("optout", "lists")


def entries(n: int) -> dict:
    return {f"cc/name-{i:05d}.example": True for i in range(n)}


def parts_of(ents: dict, size: int, version: int, scope: str = FLEET) -> list[tuple[str, bytes]]:
    """The messages the controller publishes for a split snapshot (as statectl renders them)."""
    chunks = [d for d, _ in split(ents, size)]
    h = head("lists", scope, version, "ctl", "t")
    out = [(stream_topics("lists", scope, None, i),
            json.dumps({**h, "part": i, "parts": len(chunks), "count": len(ents), "entries": c}).encode())
           for i, c in enumerate(chunks)]
    return out + [(stream_topics("lists", scope, None), json.dumps({**h, "parts": len(chunks),
                                                                     "count": len(ents)}).encode())]


def msgs(wire):
    return [parse_state(t, p, "edge-1", KINDS) for t, p in wire]


def test_split_keeps_every_part_under_the_size_and_loses_nothing():
    ents = entries(1000)
    parts = split(ents, 2048)
    chunks = [d for d, _ in parts]
    assert len(chunks) > 10 and all(json.loads(data) == d for d, data in parts)
    assert all(len(json.dumps(c, separators=(",", ":"))) <= 2048 for c in chunks)
    merged = {k: v for c in chunks for k, v in c.items()}
    assert merged == ents and sum(len(c) for c in chunks) == len(ents)
    assert [d for d, _ in split(ents, 1 << 20)] == [ents]   # fits: one part, the whole
    many = split(entries(50_000), 40)                       # too small a part size for 50,000 entries:
    assert len(many) <= MAX_PARTS and sum(len(d) for d, _ in many) == 50_000     # raised to fit MAX_PARTS


def test_the_parts_in_any_order_make_the_whole_once_all_are_in():
    ents = entries(300)
    wire = parts_of(ents, 1024, 7)
    ms = msgs(wire)
    head_msg, parts = ms[-1], ms[:-1]
    assert head_msg.parts == len(parts) and head_msg.part is None and head_msg.entries == {}
    a = Assembler()
    assert a.take(head_msg, 0.0) == (None, [])
    for m in reversed(parts[1:]):
        assert a.take(m, 1.0) == (None, [])
    whole, abandoned = a.take(parts[0], 2.0)
    assert abandoned == [] and whole.snapshot and whole.version == 7 and whole.parts == 0
    assert whole.entries == ents and a.open == {}


def test_a_missing_part_never_yields_a_snapshot_and_is_abandoned_after_the_wait():
    a = Assembler()
    ms = msgs(parts_of(entries(300), 1024, 7))
    for m in ms[:-1][:-1]:                                  # every part but the last
        assert a.take(m, 0.0)[0] is None
    assert a.sweep(10.0, 30.0) == []                        # still within the wait
    late = a.sweep(31.0, 30.0)
    assert len(late) == 1 and "missing" in late[0] and "not applied" in late[0]
    assert a.open == {}


def test_parts_of_two_versions_never_mix():
    a = Assembler()
    old, new = msgs(parts_of(entries(300), 1024, 7)), msgs(parts_of(entries(200), 1024, 8))
    a.take(old[0], 0.0)
    whole, abandoned = a.take(new[0], 1.0)                  # a newer version abandons the older one
    assert whole is None and len(abandoned) == 1 and "version 7" in abandoned[0]
    for m in old[1:-1]:                                     # stale parts of 7 are ignored
        assert a.take(m, 2.0) == (None, [])
    for m in new[1:-2]:
        assert a.take(m, 2.0)[0] is None
    whole, _ = a.take(new[-2], 3.0)
    assert whole.version == 8 and whole.entries == entries(200)


def test_parts_that_disagree_are_refused_whole():
    a = Assembler()
    ms = msgs(parts_of(entries(300), 1024, 7))
    a.take(ms[0], 0.0)
    bad = ms[1].__class__(**{**ms[1].__dict__, "count": 5})
    with pytest.raises(StateRefused) as exc:
        a.take(bad, 0.0)
    assert exc.value.reason == "invalid" and a.open == {}
    dup = msgs(parts_of(entries(300), 1024, 9))
    dup[1] = dup[1].__class__(**{**dup[1].__dict__, "entries": dup[0].entries})   # a key in two parts
    for m in dup[:-2]:
        a.take(m, 0.0)
    with pytest.raises(StateRefused, match="two parts"):
        a.take(dup[-2], 0.0)


@pytest.mark.parametrize("doc, why", [
    ({"part": 1, "parts": 3, "count": 2, "entries": {}}, "part: expected 0"),       # topic says 0
    ({"part": 0, "parts": 1, "count": 2, "entries": {}}, "parts: expected"),
    ({"part": 0, "parts": 5000, "count": 2, "entries": {}}, "parts: expected"),
    ({"part": 0, "parts": 3, "count": -1, "entries": {}}, "count: expected"),
    ({"part": 0, "parts": 3, "count": 2, "entries": []}, "entries: expected"),
])
def test_a_bad_part_is_refused_naming_the_field(doc, why):
    topic = stream_topics("lists", FLEET, None, 0)
    with pytest.raises(StateRefused, match=why) as exc:
        parse_state(topic, json.dumps({**head("lists", FLEET, 3, "ctl", "t"), **doc}).encode(), "edge-1", KINDS)
    assert exc.value.reason == "malformed"


def test_a_node_part_for_another_node_is_refused():
    topic = stream_topics("optout", "edge-2", None, 0)
    doc = {**head("optout", "edge-2", 3, "ctl", "t"), "part": 0, "parts": 2, "count": 0, "entries": {}}
    with pytest.raises(StateRefused) as exc:
        parse_state(topic, json.dumps(doc).encode(), "edge-1", KINDS)
    assert exc.value.reason == "other_node"


def test_the_part_size_and_wait_are_policy_keys_checked_with_file_and_line(policy_dir):
    import re

    from nocpolicy.errors import PolicyInvalid
    from nocpolicy.policy.load import load_policy

    s = policy_dir / "settings.yaml"
    text = s.read_text()
    assert load_policy(policy_dir).control.state_part_size == 8 << 20            # the default
    s.write_text(re.sub(r"(  groups:\n)", r"  state_part_size: 64KiB\n  state_part_wait: 30s\n\1", text))
    c = load_policy(policy_dir).control
    assert (c.state_part_size, c.state_part_wait) == (64 << 10, 30.0)
    s.write_text(re.sub(r"(  groups:\n)", r"  state_part_size: 10\n  state_part_wait: 2h\n\1", text))
    with pytest.raises(PolicyInvalid) as info:
        load_policy(policy_dir)
    got = [str(p) for p in info.value.problems]
    assert any("settings.yaml:" in g and "control.state_part_size" in g and "outside 1024" in g for g in got), got
    assert any("settings.yaml:" in g and "control.state_part_wait" in g and "outside" in g for g in got), got
