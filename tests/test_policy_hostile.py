"""Hostile or mistyped policy input (issue 14): absurd values are refused where they are
written, an alias bomb is refused before it is expanded, bad UTF-8 is pointed at."""

from __future__ import annotations

import time

import pytest

from nocpolicy.policy.load import load_policy
from test_policy_errors import assert_problems, problems_of, write


@pytest.mark.parametrize("files,expected", [
    pytest.param({"maintenance.yaml": """
        maintenance:
          notice:
            reminder_before: 12345678901234567890123456
        """}, [("maintenance.yaml:3: maintenance.notice.reminder_before", "beyond the longest duration")],
        id="reminder-26-digits"),
    pytest.param({"maintenance.yaml": """
        maintenance:
          notice:
            reminder_before: 90d
        """}, [("maintenance.yaml:3: maintenance.notice.reminder_before", "outside 0s..30d")],
        id="reminder-90d"),
    pytest.param({"emergency.yaml": """
        emergency_profiles:
          - id: quake
            category: disaster-relief
            max_duration: 100000000000000
          - id: storm
            category: disaster-relief
            max_duration: 99999999999999999999999999999999d
          - id: flood
            category: disaster-relief
            max_duration: 400d
        """}, [("emergency.yaml:4: emergency_profiles[0].max_duration", "beyond the longest duration"),
               ("emergency.yaml:7: emergency_profiles[1].max_duration", "beyond the longest duration"),
               ("emergency.yaml:10: emergency_profiles[2].max_duration", "outside 1m..90d")],
        id="max-duration-1e14"),
    pytest.param({"zz.yaml": """
        plans:
          - id: p9
            down: 100000000000000000000000000000gbit
            up: 99999999999999999999999999
        """}, [("zz.yaml:3: plans[0].down", "beyond the highest rate"),
               ("zz.yaml:4: plans[0].up", "outside 1..10tbit")], id="absurd-rates"),
    pytest.param({"zz.yaml": """
        detect:
          block_for: 1000d
          events_interval: 2d
        """}, [("zz.yaml:2: detect.block_for", "outside 0s..90d"),
               ("zz.yaml:3: detect.events_interval", "outside 0s..1d")], id="detect-durations"),
])
def test_absurd_values_are_refused_with_file_line(policy_dir, files, expected):
    for name, text in files.items():
        write(policy_dir, name, text)
    assert_problems(policy_dir, expected)


def test_list_limits_have_ranges(policy_dir):
    write(policy_dir, "dns.yaml", """
        dns:
          upstreams:
            - {id: u, address: 127.0.0.1:53, timeout: 3650d}
          lists:
            - {id: l, class: security, source: "https://x.example/l", max_size: 100TiB, max_entries: 0,
               fetch_timeout: 10h, refresh: 1s}
        """)
    got = problems_of(policy_dir)
    for field, reason in (("upstreams[0].timeout", "outside 0.01s..1m"), ("max_size", "not a size"),
                          ("max_entries", "out of range 1..50000000"), ("fetch_timeout", "outside 1s..1h"),
                          ("refresh", "outside 10s..30d")):
        assert any(field in g and reason in g for g in got), (field, got)


def test_alias_bomb_is_refused_quickly_with_file_line(policy_dir):
    lol = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lol.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [{', '.join(['*' + prev] * 9)}]")
    text = "settings:\n  x:\n" + "".join(f"    {line}\n" for line in lol)
    assert len(text.encode()) < 600          # expands to 9**9 (387 million) nodes
    (policy_dir / "zz.yaml").write_text(text)
    t0 = time.process_time()
    got = problems_of(policy_dir)
    assert time.process_time() - t0 < 2.0, "refused before the aliases were expanded"
    # the first line whose aliases pass the budget (f repeats e, 66,430 nodes, 9 times): "f: &f [*e, ...]"
    assert any(g.startswith("policies/zz.yaml:8: ") and "alias bomb" in g for g in got), got


def test_anchors_within_budget_still_load(policy_dir):
    write(policy_dir, "zz.yaml", """
        plans:
          - &base {id: p1, name: Base, down: 10mbit, up: 5mbit}
          - <<: *base
            id: p2
        """)
    assert {"p1", "p2"} <= {p.id for p in load_policy(policy_dir).plans}


def test_invalid_utf8_names_the_line_and_column_of_the_bad_byte(policy_dir):
    data = "customers:\n  - id: c9\n    name: \"Café\"\n".encode() + b"    note: ab\xff\n"
    (policy_dir / "zz.yaml").write_bytes(data)
    got = problems_of(policy_dir)
    assert any(g.startswith("policies/zz.yaml:4: ") and "0xff at line 4, column 13" in g for g in got), got
