"""A reload of the CSV inventory whose rows were edited in place is patched into the previous
load (policy/invpatch.py): only the changed rows are checked, the result is what a first
load of the new file gives, and every problem a changed row brings (a bad field, a taken id,
a prefix overlapping an unchanged row's of another length or a YAML customer's) is still
refused as file:line: column: reason, the policy in force kept."""

from __future__ import annotations

import pytest

from helpers import copy_policies
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy import invpatch
from nocpolicy.policy.load import load_policy

HEADER = "id,name,plan,prefixes,logins,tags,nodes,contact\n"
N = 20_000


def _row(i: int) -> str:
    return (f"h{i:06d},C{i},home-100m,10.{i >> 14}.{(i >> 6) & 0xFF}.{(i & 63) * 4}/30 3fff:{i:x}::/48,"
            f"u{i}@isp.example,fiber-home,edge-tokyo-1,c{i}@example.jp")


@pytest.fixture
def pol(tmp_path):
    pol = copy_policies(tmp_path)
    (pol / "inventory.yaml").write_text("inventory:\n  file: customers.csv\n")
    (pol / "customers.csv").write_text(HEADER + "".join(_row(i) + "\n" for i in range(N)))
    return pol


def _edit(pol, edits: dict[int, str]) -> None:
    """Replace row i's line (file line i + 2)."""
    lines = (pol / "customers.csv").read_text().split("\n")
    for i, line in edits.items():
        lines[i + 1] = line
    (pol / "customers.csv").write_text("\n".join(lines))


def _state(inv):
    p = inv.packed
    return (inv.ids, dict(inv.index), list(inv.offsets), list(inv.lines), [inv.plan(i) for i in range(len(inv))],
            list(p.code), list(p.hi), list(p.lo), list(p.start), list(p.row), [list(k) for k in inv._logins],
            sorted((code, sorted(t.items())) for code, t in inv.read_tables.items()))


@pytest.fixture
def checked(monkeypatch):
    """The number of rows validated by the column-wise check."""
    rows = []
    real = invpatch.check_block
    monkeypatch.setattr(invpatch, "check_block", lambda r, ix: rows.append(len(r)) or real(r, ix))
    return rows


def test_an_in_place_reload_checks_only_the_changed_rows_and_equals_a_first_load(pol, checked):
    a = load_policy(pol)
    edits = {i: _row(i).replace(f",C{i},", f",Renamed {i},") for i in range(0, N, 100)}     # 1%: names
    edits[501] = _row(501).replace("h000501", "x000501")                               # an id
    edits[702] = _row(702).replace("u702@", "new702@")                                 # a login
    edits[903] = _row(903).replace(" 3fff:387::/48", "")                               # one prefix fewer
    edits[1104] = _row(1104).replace("/48", "/48 3fff:ffff::/48")                      # one more
    edits[1305] = _row(1305).replace("home-100m", "biz-1g")                            # a plan
    _edit(pol, edits)
    b = load_policy(pol, previous=a)
    inv = b.customers.inventory
    assert checked == [len(edits)] and inv.delta_probes is not None                  # patched
    assert inv.changed == {f"h{i:06d}" for i in edits} | {"x000501"}
    assert "h000501" not in b.customers_by_id and b.customers_by_id["x000501"].name == "C501"
    assert inv.login_owner("new702@isp.example") == "h000702" and inv.login_owner("u702@isp.example") is None
    assert inv.login_owner("u19999@isp.example") == "h019999"
    assert [str(p) for p in b.customers_by_id["h000903"].prefixes] == ["10.0.14.28/30"]
    assert [str(p) for p in b.customers_by_id["h001104"].prefixes][-1] == "3fff:ffff::/48"
    assert b.customers_by_id["h001305"].plan == "biz-1g" and b.customers_by_id["h000200"].name == "Renamed 200"
    assert b.customers_by_id["h019999"].loc.line == N + 1
    fresh = load_policy(pol).customers.inventory
    assert _state(inv) == _state(fresh)
    edits2 = {5: _row(5).replace("u5@", "again5@"), 19_999: _row(19_999).replace(",C19999,", ",Last,")}
    _edit(pol, edits2)                                                               # a patch of a patch
    c = load_policy(pol, previous=b)
    assert c.customers.inventory.delta_probes is not None and c.customers_by_id["h019999"].name == "Last"
    assert _state(c.customers.inventory) == _state(load_policy(pol).customers.inventory)
    assert c.customers.inventory.login_owner("again5@isp.example") == "h000005"


def test_the_view_follows_a_patched_reload(pol):
    from nocpolicy.subscribers.model import Decisions
    from nocpolicy.subscribers.view import build_view, reload_view
    a = load_policy(pol)
    view = build_view(a.customers, "protect", Decisions())
    assert view.subscriber("10.0.0.5").customer == "h000001"
    _edit(pol, {1: _row(1).replace("10.0.0.4/30", "10.0.0.4/31"), 2: _row(2).replace(",C2,", ",Two,")})
    b = load_policy(pol, previous=a)
    new = reload_view(view, b.customers, "protect", view.decisions)
    assert new.subscriber("10.0.0.5").customer == "h000001"
    assert new.subscriber("10.0.0.6").customer is None                              # now a /31
    assert new.subscriber("10.0.0.9").customer == "h000002"


@pytest.mark.parametrize(("row", "was", "now", "expect"), [
    (3000, "h003000", "h000001", "{csv}:3002: customers[id=h000001]: duplicate id 'h000001' (first defined at {csv}:3)"),
    (3000, "10.0.46.224/30", "10.0.46.225/30", "{csv}:3002: prefixes: '10.0.46.225/30' has host bits set"),
    (3000, "c3000@example.jp", "nobody", "{csv}:3002: contact: 'nobody' is not an e-mail address"),
    (3000, "home-100m", "no-such-plan", "{csv}:3002: customers[id=h003000].plan: unknown plan 'no-such-plan'"),
])
def test_a_changed_row_with_a_problem_is_refused_naming_its_line(pol, row, was, now, expect):
    a = load_policy(pol)
    _edit(pol, {row: _row(row).replace(was, now)} | {i: _row(i).replace(f",C{i},", ",X,") for i in range(1, N, 100)})
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol, previous=a)
    text = "\n".join(str(p) for p in e.value.problems)
    assert expect.format(csv=pol / "customers.csv") in text
    assert len(e.value.problems) == 1
    assert a.customers_by_id["h003000"].name == "C3000"                             # the policy in force kept


@pytest.mark.parametrize(("prefix", "others"), [
    ("10.0.0.0/29", ("h000000", "h000001")),    # a shorter prefix covering unchanged /30s
    ("10.0.0.4/32", ("h000001",)),              # a longer one inside an unchanged /30
    ("3fff:1:0:8000::/49", ("h000001",)),       # inside another row's /48
    ("192.0.2.0/32", ("c1001",)),               # inside a YAML customer's prefix
])
def test_a_changed_row_overlapping_an_unchanged_one_is_refused_naming_both(pol, prefix, others):
    a = load_policy(pol)
    old = "3fff:bb8::/48" if ":" in prefix else "10.0.46.224/30"
    _edit(pol, {3000: _row(3000).replace(old, prefix)} | {i: _row(i).replace(f",C{i},", ",X,") for i in range(1, N, 100)})
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol, previous=a)
    text = "\n".join(str(p) for p in e.value.problems)
    assert "h003000" in text and any(o in text for o in others) and "overlap" in text
    assert f"{pol / 'customers.csv'}:3002" in text
    assert all(len(t) == N for t in a.customers.inventory.read_tables.values())   # the previous tables untouched


def test_a_yaml_customer_changed_to_overlap_an_unchanged_row_is_refused(pol):
    a = load_policy(pol)
    yaml = (pol / "customers.yaml").read_text()
    assert "192.0.2.0/26" in yaml
    (pol / "customers.yaml").write_text(yaml.replace("192.0.2.0/26", "10.0.0.0/24"))
    _edit(pol, {7: _row(7).replace(",C7,", ",Seven,")})
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol, previous=a)
    text = "\n".join(str(p) for p in e.value.problems)
    assert "overlap" in text and "h000000" in text and "c1001" in text


@pytest.mark.parametrize("edit", ["append", "delete", "blank", "comment"])
def test_an_edit_that_moves_lines_is_read_in_full_and_right(pol, edit):
    a = load_policy(pol)
    text = (pol / "customers.csv").read_text()
    lines = text.split("\n")
    if edit == "append":
        lines.insert(-1, _row(N))
    elif edit == "delete":
        del lines[5001]
    elif edit == "blank":
        lines[5001] = ""
    else:
        lines[5001] = "# h005000 left"
    (pol / "customers.csv").write_text("\n".join(lines))
    b = load_policy(pol, previous=a)
    assert b.customers.inventory.delta_probes is None                                 # not patched
    assert _state(b.customers.inventory) == _state(load_policy(pol).customers.inventory)
    assert ("h005000" in b.customers_by_id) == (edit == "append")


def test_the_overlap_check_of_a_patched_reload_probes_only_the_changed_rows(pol):
    from nocpolicy.policy import customers
    a = load_policy(pol)
    _edit(pol, {1: _row(1).replace("10.0.0.4/30", "10.0.0.4/31"), 2: _row(2).replace(",C2,", ",Two,")})
    b = load_policy(pol, previous=a)
    inv = b.customers.inventory
    assert inv.delta_probes == [(31, 0x0A000004), (0x100 | 48, 0x3FFF0001 << 96)]   # h000001's, not h000002's
    assert customers._disjoint_delta(b.customers.static, inv)
    _edit(pol, {2: _row(2).replace("10.0.0.8/30", "10.0.0.5/32")})   # inside h000001's new /31
    with pytest.raises(PolicyInvalid):
        load_policy(pol, previous=b)


def test_a_patched_reload_of_a_crlf_file_with_quoted_fields_and_comments(pol):
    lines = [HEADER.rstrip("\n"), "# exported by the CRM"] + [_row(i) for i in range(2000)]
    lines[500] = "# a comment among the rows"
    (pol / "customers.csv").write_text("\r\n".join(lines) + "\r\n", newline="")
    a = load_policy(pol)
    lines[1001] = _row(999).replace(",C999,", ',"Sato, Kogyo",')                    # file line 1002
    lines[1501] = _row(1499).replace("u1499@", "v1499@")
    (pol / "customers.csv").write_text("\r\n".join(lines) + "\r\n", newline="")
    b = load_policy(pol, previous=a)
    inv = b.customers.inventory
    assert inv.delta_probes is not None and inv.changed == {"h000999", "h001499"}
    assert b.customers_by_id["h000999"].name == "Sato, Kogyo" and b.customers_by_id["h000999"].loc.line == 1002
    assert inv.login_owner("v1499@isp.example") == "h001499"
    assert _state(inv) == _state(load_policy(pol).customers.inventory)


_KINDS = ("rename", "quote", "id", "dup-id", "prefix", "overlap", "v6", "drop-v6", "login", "plan", "bad-plan",
          "host-bits", "blank", "comment", "same")


def _edited(i: int, kind: str, n: int) -> str:
    row = _row(i)
    return {"rename": row.replace(f",C{i},", f",R{i},"), "quote": row.replace(f",C{i},", f',"C, {i}",'),
            "id": row.replace(f"h{i:06d}", f"z{i:06d}"), "dup-id": row.replace(f"h{i:06d}", f"h{(i + 1) % n:06d}"),
            "prefix": row.replace("/30", "/31"), "overlap": row.replace(_row(i).split(",")[3].split()[0],
                                                                        _row((i + 3) % n).split(",")[3].split()[0]),
            "v6": row.replace("::/48", "::/49"), "drop-v6": row.replace(f" 3fff:{i:x}::/48", ""),
            "login": row.replace(f"u{i}@", f"w{i}@"), "plan": row.replace("home-100m", "biz-1g"),
            "bad-plan": row.replace("home-100m", "gold"), "host-bits": row.replace("/30", "/29"),
            "blank": "", "comment": "# gone", "same": row}[kind]


def _outcome(pol, previous=None):
    try:
        p = load_policy(pol, previous=previous)
    except PolicyInvalid as e:
        return "refused", sorted(str(x) for x in e.problems)
    return "loaded", _state(p.customers.inventory)


@pytest.mark.parametrize("groups", [(256, 16), (8, 2)])
def test_a_reload_equals_a_first_load_of_the_same_file_for_any_in_place_edits(tmp_path, monkeypatch, groups):
    """Property: whatever rows are edited in place (and however: names, quoted names, ids, a taken
    id, prefixes, an overlap, logins, plans, a bad field, a row blanked or commented out), a
    reload against the previous load (patched or read in full) gives exactly what a first load
    of the new file gives: the same inventory, or the same problems."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from nocpolicy.policy import inventory
    monkeypatch.setattr(invpatch, "GROUP", groups[0])
    monkeypatch.setattr(invpatch, "SUBGROUP", groups[1])
    n = 600
    patched = []
    pol = copy_policies(tmp_path)
    (pol / "inventory.yaml").write_text("inventory:\n  file: customers.csv\n")
    original = HEADER + "".join(_row(i) + "\n" for i in range(n))
    (pol / "customers.csv").write_text(original)
    a = load_policy(pol)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(st.integers(0, n - 1), st.sampled_from(_KINDS), min_size=1, max_size=12))
    def check(edits):
        lines = original.split("\n")
        for i, kind in edits.items():
            lines[i + 1] = _edited(i, kind, n)
        (pol / "customers.csv").write_text("\n".join(lines))
        real = inventory.patch
        monkeypatch.setattr(inventory, "patch", lambda *args: patched.append(real(*args)) or patched[-1])
        again = _outcome(pol, previous=a)
        monkeypatch.setattr(inventory, "patch", real)
        assert again == _outcome(pol)

    check()
    assert any(p is not None for p in patched) and None in patched       # both paths were taken
