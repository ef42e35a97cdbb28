"""Every kind of policy error is reported as ``file:line: path.to.field: reason``.

Each case adds (or replaces) files in a private copy of the example policies and
checks that load_policy reports exactly the expected problems at the expected
places. Line numbers are counted in the snippet written by the test.
"""

from __future__ import annotations

import textwrap

import pytest

from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy


def problems_of(directory) -> list[str]:
    """Problems as printed, with the test's temporary directory shown as ``policies/``."""
    with pytest.raises(PolicyInvalid) as info:
        load_policy(directory)
    return [str(p).replace(f"{directory}/", "policies/") for p in info.value.problems]


def write(directory, name: str, text: str) -> None:
    (directory / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


def assert_problems(directory, expected: list[tuple[str, str]]) -> list[str]:
    """``expected``: (``file:line: path``, reason fragment); every problem must be expected."""
    got = problems_of(directory)
    unmatched = list(got)
    for where, reason in expected:
        hits = [g for g in unmatched if g.startswith(f"policies/{where}: ") and reason in g]
        assert hits, f"missing {where}: ...{reason}...\ngot:\n" + "\n".join(got)
        unmatched.remove(hits[0])
    assert not unmatched, "unexpected problems:\n" + "\n".join(unmatched)
    return got


def test_example_policy_is_valid(policy_dir):
    p = load_policy(policy_dir)
    assert len(p.customers) == 5 and len(p.dns.lists) == 3 and len(p.profiles) == 1
    assert any(c.public_safety for c in p.customers)
    assert any(c.security_optout for c in p.customers)
    assert {bl.cls for bl in p.dns.lists} >= {"mandatory", "security"}
    assert len(p.dns.upstreams) == 2


# (case id, {file: text}, [(file:line: path, reason fragment)])
CASES = [
    ("yaml-syntax", {"zz.yaml": """
        customers:
          - id: c9
            name: [unclosed
        """}, [("zz.yaml:4", "YAML syntax error")]),
    ("yaml-tab", {"zz.yaml": "plans:\n\t- id: x\n"}, [("zz.yaml:2", "YAML syntax error")]),
    ("duplicate-key", {"zz.yaml": """
        plans:
          - id: p9
            down: 1mbit
            down: 2mbit
        """}, [("zz.yaml:4: plans[0].down", "duplicate key (first at line 3)")]),
    ("unknown-key", {"zz.yaml": """
        plans:
          - id: p9
            down: 1mbit
            dwon: 2mbit
        """}, [("zz.yaml:4: plans[0].dwon", "unknown key (expected one of:")]),
    ("unknown-nested-key", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            contact:
              email: a@b.example
              phone: "0312345678"
        """}, [("zz.yaml:6: customers[0].contact.phone", "unknown key")]),
    ("unknown-section", {"zz.yaml": """
        custmers: []
        """}, [("zz.yaml:1: custmers", "unknown section (expected one of:")]),
    ("file-not-a-mapping", {"zz.yaml": """
        - id: c9
        """}, [("zz.yaml:1: (top)", "a policy file must be a mapping of sections")]),
    ("section-twice", {"zz.yaml": """
        dns:
          unknown_clients: refuse
        """}, [("zz.yaml:1: dns", "section already defined at policies/dns.yaml:")]),
    ("list-section-in-two-files-is-fine-but-ids-clash", {"zz.yaml": """
        plans:
          - id: home-100m
            down: 1mbit
        """}, [("zz.yaml:2: plans[id=home-100m]", "duplicate id 'home-100m' (first defined at policies/customers.yaml:3)")]),
    ("wrong-types", {"zz.yaml": """
        customers:
          - id: c9
            name: [a, b]
            public_safety: "yes"
            prefixes: {a: 1}
        maintenance:
          notice:
            planned_days: "14"
        """}, [("zz.yaml:3: customers[0].name", "expected a string, got a list"),
               ("zz.yaml:4: customers[0].public_safety", "expected true or false, got str 'yes'"),
               ("zz.yaml:5: customers[0].prefixes", "expected a list, got a mapping"),
               ("zz.yaml:6: maintenance", "section already defined"),
               ]),
    ("wrong-int", {"maintenance.yaml": """
        maintenance:
          notice:
            planned_days: "14"
            reminder_before: 24h
        """}, [("maintenance.yaml:3: maintenance.notice.planned_days", "expected an integer, got str '14'")]),
    ("planned-days-below-law", {"maintenance.yaml": """
        maintenance:
          notice:
            planned_days: 7
        """}, [("maintenance.yaml:3: maintenance.notice.planned_days", "7 is out of range 14..365")]),
    ("missing-required", {"zz.yaml": """
        plans:
          - name: no id and no rate
        """}, [("zz.yaml:2: plans[0].id", "required key is missing"),
               ("zz.yaml:2: plans[0].down", "required key is missing")]),
    ("bad-id", {"zz.yaml": """
        plans:
          - id: "has space"
            down: 1mbit
        """}, [("zz.yaml:2: plans[0].id", "is not a valid id")]),
    ("bad-cidr", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes: [10.0.0.0/33, nonsense, "2001:db8::/129"]
        """}, [("zz.yaml:4: customers[0].prefixes[0]", "'10.0.0.0/33' is not an IPv4/IPv6 prefix"),
               ("zz.yaml:4: customers[0].prefixes[1]", "'nonsense' is not an IPv4/IPv6 prefix"),
               ("zz.yaml:4: customers[0].prefixes[2]", "'2001:db8::/129' is not an IPv4/IPv6 prefix")]),
    ("host-bits", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes:
              - 10.9.0.1/16
              - "2001:db8:9::1/48"
        """}, [("zz.yaml:5: customers[0].prefixes[0]", "has host bits set (did you mean 10.9.0.0/16?)"),
               ("zz.yaml:6: customers[0].prefixes[1]", "has host bits set (did you mean 2001:db8:9::/48?)")]),
    ("duplicate-prefix-in-list", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes: [10.9.0.0/16, 10.9.0.0/16]
        """}, [("zz.yaml:4: customers[0].prefixes[1]", "duplicate 10.9.0.0/16 (first at line 4)")]),
    ("bad-rates", {"zz.yaml": """
        plans:
          - id: p9
            down: fast
            up: 0
            emergency_down: -5mbit
          - id: p10
            down: 100mbps
        """}, [("zz.yaml:3: plans[0].down", "'fast' is not a rate"),
               ("zz.yaml:7: plans[1].down", "'mbps' is ambiguous (tc reads it as bytes per second); write 100mbit"),
               ("zz.yaml:4: plans[0].up", "a rate must be positive"),
               ("zz.yaml:5: plans[0].emergency_down", "'-5mbit' is not a rate")]),
    ("emergency-cap-above-normal", {"zz.yaml": """
        plans:
          - id: p9
            down: 10mbit
            emergency_down: 20mbit
        """}, [("zz.yaml:4: plans[0].emergency_down",
                "the emergency cap (20000000 bit/s) is above the normal cap down (10000000 bit/s)")]),
    ("bad-durations", {"emergency.yaml": """
        emergency_profiles:
          - id: quake
            category: disaster-relief
            max_duration: soon
          - id: flood
            category: disaster-relief
            max_duration: -1
          - id: storm
            category: disaster-relief
            max_duration: 5x
        """}, [("emergency.yaml:4: emergency_profiles[0].max_duration", "'soon' is not a duration"),
               ("emergency.yaml:7: emergency_profiles[1].max_duration", "must not be negative"),
               ("emergency.yaml:10: emergency_profiles[2].max_duration", "'5x' is not a duration")]),
    ("bad-times", {"maintenance.yaml": """
        maintenance:
          windows:
            - id: w1
              kind: planned
              start: tomorrow morning
              end: 2026-12-01T06:00:00+09:00
              reason: {ja: 工事, en: works}
              scope: {customers: [c1001]}
            - id: w2
              kind: planned
              start: 2026-12-01T06:00:00+09:00
              end: 2026-12-01T02:00:00+09:00
              reason: {ja: 工事, en: works}
              scope: {customers: [c1001]}
        """}, [("maintenance.yaml:5: maintenance.windows[0].start", "'tomorrow morning' is not an ISO 8601 time"),
               ("maintenance.yaml:12: maintenance.windows[1].end", "end must be after start")]),
    ("bad-timezone-email-url", {"settings.yaml": """
        settings:
          timezone: Mars/Olympus
        """, "zz.yaml": """
        customers:
          - id: c9
            name: Nine
            contact:
              email: not-an-address
              webhook: ftp://x.example/
        """}, [("settings.yaml:2: settings.timezone", "'Mars/Olympus' is not a known IANA time zone"),
               ("zz.yaml:5: customers[0].contact.email", "is not an e-mail address"),
               ("zz.yaml:6: customers[0].contact.webhook", "is not a URL with scheme http or https")]),
    ("bad-choices", {"emergency.yaml": """
        interfaces:
          - name: this-name-is-far-too-long
            rate: 1gbit
        emergency_profiles:
          - id: quake
            category: earthquake
            network_control: [dns, telnet]
        """}, [("emergency.yaml:2: interfaces[0].name", "is not a Linux interface name"),
               ("emergency.yaml:6: emergency_profiles[0].category", "'earthquake' is not one of: disaster-relief"),
               ("emergency.yaml:7: emergency_profiles[0].network_control[1]", "'telnet' is not one of:")]),
    ("share-plus-floor", {"emergency.yaml": """
        emergency_profiles:
          - id: quake
            category: disaster-relief
            priority_share: 85%
            ordinary_floor: 0.2
        """}, [("emergency.yaml:5: emergency_profiles[0].ordinary_floor",
                "priority_share (85%) + ordinary_floor (20%) exceed 100%")]),
    ("bad-fraction", {"emergency.yaml": """
        emergency_profiles:
          - id: quake
            category: disaster-relief
            priority_share: 140%
        """}, [("emergency.yaml:4: emergency_profiles[0].priority_share", "outside 0..1")]),
    ("sinkhole-bad-address", {"zz.yaml": """
        plans: []
        """, "dns.yaml": """
        dns:
          lists:
            - id: l1
              class: optional
              source: lists/ads-hosts.txt
              format: hosts
              action: sinkhole
              sinkhole_a: "::1"
        """}, [("dns.yaml:8: dns.lists[0].sinkhole_a", "must be an IPv4 address"),
               ("customers.yaml:34: customers[id=c1002].optional_lists", "unknown list 'ads-tracking'")]),
    ("sinkhole-without-address", {"dns.yaml": """
        dns:
          lists:
            - {id: ads-tracking, class: optional, source: lists/ads-hosts.txt, format: hosts, action: sinkhole}
        """}, [("dns.yaml:3: dns.lists[0].action", "action sinkhole needs sinkhole_a and/or sinkhole_aaaa")]),
    ("duplicate-ids-everywhere", {"zz.yaml": """
        customers:
          - id: c1001
            name: again
        plans:
          - id: biz-1g
            down: 1mbit
        emergency_profiles:
          - id: earthquake
            category: other-public-interest
        interfaces:
          - name: nocp-down0
            rate: 1gbit
        """, "dns.yaml": """
        dns:
          upstreams:
            - {id: u1, address: 127.0.0.1:53}
            - {id: u1, address: "[::1]:53"}
          lists:
            - {id: l1, class: mandatory, source: lists/mandatory.txt}
            - {id: l1, class: security, source: lists/cc-maltrail.txt, format: maltrail}
            - {id: ads-tracking, class: optional, source: lists/ads-hosts.txt, format: hosts}
        """, "maintenance.yaml": """
        maintenance:
          windows:
            - {id: w1, kind: fault, start: "2026-12-01T01:00", end: "2026-12-01T02:00",
               reason: {ja: 故障, en: fault}, scope: {tags: [tokyo-east]}}
            - {id: w1, kind: fault, start: "2026-12-02T01:00", end: "2026-12-02T02:00",
               reason: {ja: 故障, en: fault}, scope: {tags: [tokyo-east]}}
        """}, [("zz.yaml:2: customers[id=c1001]", "duplicate id 'c1001' (first defined at policies/customers.yaml:19)"),
               ("zz.yaml:5: plans[id=biz-1g]", "duplicate id 'biz-1g'"),
               ("zz.yaml:8: emergency_profiles[id=earthquake]", "duplicate id 'earthquake' (first defined at policies/emergency.yaml:7)"),
               ("zz.yaml:11: interfaces[id=nocp-down0]", "duplicate id 'nocp-down0'"),
               ("dns.yaml:4: dns.upstreams[id=u1]", "duplicate id 'u1' (first defined at policies/dns.yaml:3)"),
               ("dns.yaml:7: dns.lists[id=l1]", "duplicate id 'l1' (first defined at policies/dns.yaml:6)"),
               ("maintenance.yaml:5: maintenance.windows[id=w1]", "duplicate id 'w1' (first defined at policies/maintenance.yaml:3)")]),
    ("dangling-references", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            plan: gold
            optional_lists: [no-such-list, csam-mandatory]
        emergency_profiles:
          - id: flood
            category: disaster-relief
            priority:
              customers: [ghost]
              dscp:
                values: [46]
                customers: [phantom]
        """, "maintenance.yaml": """
        maintenance:
          windows:
            - id: w1
              kind: planned
              start: 2026-12-20T01:00:00+09:00
              end: 2026-12-20T05:00:00+09:00
              reason: {ja: 工事, en: works}
              scope: {customers: [c1001, nobody]}
        """}, [("zz.yaml:4: customers[id=c9].plan", "unknown plan 'gold' (known: biz-1g, home-100m, public-safety)"),
               ("zz.yaml:5: customers[id=c9].optional_lists", "unknown list 'no-such-list'"),
               ("zz.yaml:5: customers[id=c9].optional_lists", "list 'csam-mandatory' is mandatory, not optional"),
               ("zz.yaml:10: emergency_profiles[id=flood].priority.customers", "unknown customer 'ghost'"),
               ("zz.yaml:13: emergency_profiles[id=flood].priority.dscp.customers", "unknown customer 'phantom'"),
               ("maintenance.yaml:8: maintenance.windows[id=w1].scope.customers", "unknown customer 'nobody'")]),
    ("overlap-other-customer-v4", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes: [192.0.2.32/27]
        """}, [("zz.yaml:4: customers[id=c9].prefixes",
                "192.0.2.32/27 overlaps 192.0.2.0/26 of customer 'c1001' (policies/customers.yaml:21)")]),
    ("overlap-other-customer-v6-covering", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes: ["2001:db8:1000::/36"]
        """}, [("customers.yaml:21: customers[id=c1001].prefixes",
                "2001:db8:1001::/48 overlaps 2001:db8:1000::/36 of customer 'c9' (policies/zz.yaml:4)"),
               ("customers.yaml:30: customers[id=c1002].prefixes", "2001:db8:1002::/48 overlaps 2001:db8:1000::/36"),
               ("customers.yaml:41: customers[id=c1003].prefixes", "2001:db8:1003::/48 overlaps 2001:db8:1000::/36")]),
    ("overlap-same-customer", {"zz.yaml": """
        customers:
          - id: c9
            name: Nine
            prefixes: [10.9.0.0/16, 10.9.4.0/24, "2001:db8:9::/48", "2001:db8:9:1::/64"]
        """}, [("zz.yaml:4: customers[id=c9].prefixes", "10.9.4.0/24 lies inside 10.9.0.0/16 of the same customer"),
               ("zz.yaml:4: customers[id=c9].prefixes", "2001:db8:9:1::/64 lies inside 2001:db8:9::/48 of the same customer")]),
    ("list-file-missing", {"zz.yaml": """
        plans: []
        """, "dns.yaml": """
        dns:
          lists:
            - id: csam-mandatory
              class: mandatory
              source: lists/nope.txt
            - id: ads-tracking
              class: optional
              source: ftp://lists.example/ads.txt
        """}, [("dns.yaml:5: dns.lists[id=csam-mandatory].source", "file 'lists/nope.txt' not found"),
               ("dns.yaml:8: dns.lists[id=ads-tracking].source", "only local files and http(s) URLs")]),
    ("urgent-window-without-justification", {"maintenance.yaml": """
        maintenance:
          windows:
            - id: w1
              kind: fault
              start: 2026-12-20T01:00:00
              end: 2026-12-20T05:00:00
              reason: {ja: 故障, en: fault}
              urgent: true
            - id: w2
              kind: outage
              start: 2026-12-20T01:00:00
              end: 2026-12-20T05:00:00
              impact: terrible
              reason: {ja: 故障}
              scope: {tags: [x]}
        """}, [("maintenance.yaml:8: maintenance.windows[0].urgent_justification", "needs a recorded justification"),
               ("maintenance.yaml:3: maintenance.windows[0].scope", "a window needs a scope"),
               ("maintenance.yaml:10: maintenance.windows[1].kind", "'outage' is not one of: planned, fault"),
               ("maintenance.yaml:13: maintenance.windows[1].impact", "'TERRIBLE' is not one of"),
               ("maintenance.yaml:14: maintenance.windows[1].reason.en", "required key is missing")]),
    ("control-wrong-shapes", {"settings.yaml": """
        settings:
          node: edge-1
        control:
          grants:
            - identity: x
              verbs: []
          groups: [a, b]
        """}, [("settings.yaml:6: control.grants[0].verbs", "expected at least 1 item(s)"),
               ("settings.yaml:7: control.groups", "expected a mapping of group name")]),
    ("not-utf8", {"zz.yaml": None}, [("zz.yaml:2: (top)", "not UTF-8: byte 0xff at line 2, column 9")]),
]


@pytest.mark.parametrize("files,expected", [pytest.param(f, e, id=i) for i, f, e in CASES])
def test_policy_error(policy_dir, files, expected):
    for name, text in files.items():
        if text is None:
            (policy_dir / name).write_bytes(b"plans:\n  - id: \xff\xfe\n")
        else:
            write(policy_dir, name, text)
    assert_problems(policy_dir, expected)


def test_every_problem_is_reported_sorted(policy_dir):
    """Problems from several files and kinds come together, sorted by file and line."""
    write(policy_dir, "a.yaml", "plans:\n  - id: p1\n    down: x\n  - id: p2\n    down: y\n")
    write(policy_dir, "b.yaml", "customers:\n  - id: c9\n    name: N\n    plan: nope\n    prefixes: [1.2.3.4/8]\n")
    got = problems_of(policy_dir)
    assert got == [
        "policies/a.yaml:3: plans[0].down: 'x' is not a rate (examples: 800kbit, 50mbit, 1gbit)",
        "policies/a.yaml:5: plans[1].down: 'y' is not a rate (examples: 800kbit, 50mbit, 1gbit)",
        "policies/b.yaml:4: customers[id=c9].plan: unknown plan 'nope' "
        "(known: biz-1g, home-100m, p1, p2, public-safety)",
        "policies/b.yaml:5: customers[0].prefixes[0]: '1.2.3.4/8' has host bits set (did you mean 1.0.0.0/8?)",
    ]


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(PolicyInvalid, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(PolicyInvalid, match=r"no \*\.yaml files"):
        load_policy(tmp_path)


def test_recursive_alias_is_an_error_not_a_crash(policy_dir):
    write(policy_dir, "zz.yaml", "plans: &a\n  - *a\n")
    got = problems_of(policy_dir)
    assert any(g.startswith("policies/zz.yaml:") for g in got), got


def test_empty_file_is_allowed(policy_dir):
    write(policy_dir, "zz.yaml", "# nothing here yet\n")
    load_policy(policy_dir)


def test_yaml_anchors_and_merge_keys(policy_dir):
    write(policy_dir, "zz.yaml", """
        plans:
          - &base {id: p1, name: Base, down: 10mbit, up: 5mbit}
          - <<: *base
            id: p2
            down: 20mbit
          - <<: [*base]
            id: p3
            id: p4
        """)
    assert_problems(policy_dir, [("zz.yaml:8: plans[2].id", "duplicate key (first at line 7)")])
    write(policy_dir, "zz.yaml", """
        plans:
          - &base {id: p1, name: Base, down: 10mbit, up: 5mbit}
          - <<: *base
            id: p2
            down: 20mbit
        customers:
          - <<: 42
            id: c9
        """)
    assert_problems(policy_dir, [("zz.yaml:7: (top)", "bad YAML merge (<<)"),
                                 ("zz.yaml:7: customers[0].name", "required key is missing")])
    write(policy_dir, "zz.yaml", """
        plans:
          - &base {id: p1, name: Base, down: 10mbit, up: 5mbit}
          - <<: *base
            id: p2
            down: 20mbit
        """)
    p = load_policy(policy_dir)
    p2 = p.plans_by_id["p2"]
    assert (p2.name, p2.down, p2.up) == ("Base", 20_000_000, 5_000_000)
    assert p.plans_by_id["p1"].down == 10_000_000
