"""The CSV customer inventory: validation as file:line: column: reason, version, reuse, reload."""

from __future__ import annotations

import pytest

from helpers import DaemonProcess, copy_policies, wait_for
from nocpolicy.errors import PolicyInvalid
from nocpolicy.policy.load import load_policy

HEADER = "id,name,plan,prefixes,logins,tags,nodes,contact\n"


def with_inventory(tmp_path, rows: str):
    pol = copy_policies(tmp_path)
    (pol / "inventory.yaml").write_text("inventory:\n  file: customers.csv\n")
    (pol / "customers.csv").write_text(HEADER + rows)
    return pol


ROWS = ('h0001,"Tanaka, Hiroshi",home-100m,10.77.0.0/30 2001:db8:a001::/48,tanaka@isp.example,'
        'fiber-home,edge-tokyo-1,tanaka@example.jp\n'
        "h0002,Suzuki,home-100m,,suzuki@isp.example suzuki2,,,mqtt:contacts/h0002\n"
        "h0003,Sato,,10.77.0.8/30,,,,https://hooks.example/sato\n")


def test_inventory_customers_join_the_policy(tmp_path):
    p = load_policy(with_inventory(tmp_path, ROWS))
    c = p.customers_by_id["h0001"]
    assert c.name == "Tanaka, Hiroshi" and c.plan == "home-100m" and c.contact.email == "tanaka@example.jp"
    assert [str(x) for x in c.prefixes] == ["10.77.0.0/30", "2001:db8:a001::/48"]
    assert p.customers_by_id["h0002"].logins == ("suzuki@isp.example", "suzuki2")
    assert p.customers_by_id["h0002"].contact.mqtt_topic == "contacts/h0002"
    assert p.customer_for("10.77.0.9").id == "h0003"
    assert "c1001" in p.customers_by_id              # the YAML customers are still there


def test_every_bad_row_reported_as_file_line_column(tmp_path):
    rows = ("h0001,Tanaka,home-100m,10.77.0.1/30,,,,\n"          # host bits
            "h 2,Suzuki,,,,,,\n"                                     # bad id
            "h0003,Sato,gold,,,,,\n"                                 # unknown plan
            "h0004,Ito,,10.0.0.0/8,,,,not-a-contact\n"               # bad contact
            "h0005,Kato,,,,,\n"                                      # a field short
            "c1001,Dup,,,,,,\n")                                     # id taken by YAML
    with pytest.raises(PolicyInvalid) as e:
        load_policy(with_inventory(tmp_path, rows))
    text = "\n".join(str(p) for p in e.value.problems)
    csv = str(tmp_path / "policies" / "customers.csv")
    assert f"{csv}:2: prefixes: '10.77.0.1/30' has host bits set" in text
    assert f"{csv}:3: id: 'h 2' is not a valid id" in text
    assert f"{csv}:4: customers[id=h0003].plan: unknown plan 'gold'" in text
    assert f"{csv}:5: contact: 'not-a-contact' is not an e-mail address" in text
    assert f"{csv}:6: (row): 7 fields, the header has 8" in text
    assert f"{csv}:7: customers[id=c1001]: duplicate id 'c1001'" in text


def test_header_checked(tmp_path):
    pol = with_inventory(tmp_path, "")
    (pol / "customers.csv").write_text("id,nom,plan\nx,y,z\n")
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol)
    (p,) = e.value.problems
    assert p.loc.line == 1 and "unknown column(s) 'nom'" in p.reason and "missing column(s) name" in p.reason


def test_version_follows_the_csv_and_unchanged_rows_are_reused(tmp_path):
    pol = with_inventory(tmp_path, ROWS)
    a = load_policy(pol)
    (pol / "customers.csv").write_text(HEADER + ROWS.replace("Sato", "Sato Taro"))
    b = load_policy(pol, previous=a)
    assert a.version != b.version
    assert b.customers_by_id["h0003"].name == "Sato Taro"
    assert b.customers_by_id["h0001"] is a.customers_by_id["h0001"]      # not parsed again
    assert load_policy(pol, previous=b).version == b.version


def test_hot_reload_of_the_csv(tmp_path):
    pol = with_inventory(tmp_path, ROWS)
    d = DaemonProcess(tmp_path, policies=pol).start()
    try:
        v0 = d.ctl_json("status")["policy"]["version"]
        with open(pol / "customers.csv", "a") as f:
            f.write("h0004,Ito,,10.77.0.64/30,,,,\n")
        wait_for(lambda: d.ctl_json("status")["policy"]["version"] != v0, 30, what="reload after a CSV edit")
        out = d.ctl_json("explain", "--client", "10.77.0.65", "--name", "example.com")
        assert "h0004" in str(out)
        with open(pol / "customers.csv", "a") as f:
            f.write("h0005,Bad,,10.77.0.1/30,,,,\n")
        wait_for(lambda: (d.ctl_json("status").get("last_error") or {}), 30, what="refused reload")
        assert "customers.csv:6: prefixes" in str(d.ctl_json("status")["last_error"])
        assert "h0004" in str(d.ctl_json("explain", "--client", "10.77.0.65", "--name", "example.com"))
    finally:
        d.stop()


def test_prefix_index_updated_in_place_of_a_rebuild(tmp_path):
    from nocpolicy.subscribers.prefixes import PrefixIndex, customers_delta
    rows = "".join(f"h{i:04d},C{i},,10.77.{i // 64}.{(i % 64) * 4}/30,,,,\n" for i in range(500))
    pol = with_inventory(tmp_path, rows)
    a = load_policy(pol)
    lines = (pol / "customers.csv").read_text().split("\n")
    lines[5] = lines[5].replace("/30", "/31")                       # a prefix changes
    lines[7] = lines[7].replace(",C6,", ",Renamed,")                 # only the name changes
    del lines[9]                                                     # a customer leaves
    lines.insert(10, "h9999,New,,10.99.0.0/24,,,,")                  # one joins
    (pol / "customers.csv").write_text("\n".join(lines))
    b = load_policy(pol, previous=a)
    removed, added, changed = customers_delta(a.customers_by_id, b.customers)
    assert changed == {"h0004", "h0006", "h0008", "h9999"}
    idx = PrefixIndex.of_customers(a.customers).updated(removed, added)
    fresh = PrefixIndex.of_customers(b.customers)
    for host in ("10.77.0.16", "10.77.0.17", "10.77.0.18", "10.77.0.24", "10.77.0.32", "10.99.0.7", "10.1.1.1"):
        assert idx.lookup(host) == fresh.lookup(host), host
    assert idx.size == fresh.size


def test_reload_view_reuses_unchanged_customers(tmp_path):
    from nocpolicy.subscribers.model import Decisions
    from nocpolicy.subscribers.view import build_view, reload_view
    rows = "".join(f"h{i:04d},C{i},,10.77.{i // 64}.{(i % 64) * 4}/30,,,,\n" for i in range(2000))
    pol = with_inventory(tmp_path, rows)
    a = load_policy(pol)
    text = (pol / "customers.csv").read_text().replace("h0005,C5,,10.77.0.20/30", "h0005,C5,,10.88.0.0/24")
    (pol / "customers.csv").write_text(text)
    b = load_policy(pol, previous=a)
    d = Decisions()
    old = build_view(a.customers, "protect", d)
    new = reload_view(old, b.customers, "protect", d)
    fresh = build_view(b.customers, "protect", d)
    assert new.by_id["h0006"] is old.by_id["h0006"]                   # untouched: the same object
    assert new.by_id == fresh.by_id
    for host in ("10.77.0.21", "10.88.0.9", "10.77.0.25", "192.0.2.1"):
        assert new.customer_of(host) == fresh.customer_of(host), host


def _rows(n: int, start: int = 0) -> str:
    return "".join(f"h{i:06d},C{i},home-100m,10.{i >> 14}.{(i >> 6) & 0xFF}.{(i & 63) * 4}/30 "
                   f"3fff:{i:x}::/48,u{i}@isp.example,fiber-home,edge-tokyo-1,c{i}@example.jp\n"
                   for i in range(start, start + n))


def test_a_bad_row_deep_in_a_large_file_is_named_and_the_rest_checked_alike(tmp_path):
    """Blocks of rows are checked column-wise; a block with a problem is checked row by row:
    every problem still names its line and column, wherever it is."""
    rows = _rows(30_000).split("\n")
    rows[12_345] = rows[12_345].replace("/30", "/29", 1)               # host bits set
    rows[25_000] = rows[25_000].replace("c25000@example.jp", "nobody")  # bad contact
    rows[29_000] = rows[29_000].replace("h029000", "h000001")           # duplicate id
    pol = with_inventory(tmp_path, "\n".join(rows))
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol)
    csv = str(pol / "customers.csv")
    text = "\n".join(str(p) for p in e.value.problems)
    assert f"{csv}:12347: prefixes: '10.0.192.228/29' has host bits set" in text
    assert f"{csv}:25002: contact: 'nobody' is not an e-mail address" in text
    assert f"{csv}:29002: customers[id=h000001]: duplicate id 'h000001' (first defined at {csv}:3)" in text
    assert len(e.value.problems) == 3


def test_large_inventory_customers_built_on_demand_and_reload_changes_only_edited_rows(tmp_path):
    from nocpolicy.sessions.component import resolver
    from nocpolicy.subscribers.model import Decisions
    from nocpolicy.subscribers.view import build_view, reload_view
    pol = with_inventory(tmp_path, _rows(20_000))
    a = load_policy(pol)
    assert len(a.customers) == 20_000 + 5                                # + the YAML customers
    c = a.customers_by_id["h017000"]
    assert c.plan == "home-100m" and c.nodes == ("edge-tokyo-1",) and c.contact.email == "c17000@example.jp"
    assert [str(p) for p in c.prefixes] == ["10.1.9.160/30", "3fff:4268::/48"]
    resolve = resolver(a)
    assert resolve("u17000@isp.example") == ("h017000", False) and resolve("h000003") == ("h000003", False)
    assert resolve("stranger") == ("stranger", True)
    view = build_view(a.customers, "protect", Decisions())
    assert view.subscriber("10.1.9.161").customer == "h017000" and view.by_id["h017000"].plan == "home-100m"
    lines = (pol / "customers.csv").read_text().split("\n")
    lines[101] = lines[101].replace(",C100,", ",Renamed,")             # a name only
    lines[201] = lines[201].replace("/30", "/31")                      # a prefix
    (pol / "customers.csv").write_text("\n".join(lines))
    b = load_policy(pol, previous=a)
    assert b.customers.inventory.changed == {"h000100", "h000200"}
    assert b.customers_by_id["h017000"] is c                            # unchanged: the same object
    new = reload_view(view, b.customers, "protect", view.decisions)
    assert new.by_id["h000100"].customer == "h000100" and b.customers_by_id["h000100"].name == "Renamed"
    assert new.subscriber("10.0.3.33").customer == "h000200"          # now a /31: .32-.33
    assert new.subscriber("10.0.3.34").customer is None
    assert new.subscriber("10.1.9.161").customer == "h017000"
    v4_32 = [d for sh, d in view.prefixes.v4 if sh == 2][0]           # the /30 table: copied (h000200 left it)
    assert [d for sh, d in new.prefixes.v4 if sh == 2][0] is not v4_32
    v6 = [d for _, d in view.prefixes.v6]
    assert all(any(d is e for e in v6) for _, d in new.prefixes.v6)    # the /48 table: shared, untouched


def _columns(inv):
    p = inv.packed
    plans = [inv.plan(i) or None for i in range(len(inv))]
    return (inv.ids, list(inv.lines), plans, list(p.code), list(p.hi), list(p.lo), list(p.start), list(p.row),
            [inv.line(i) for i in range(len(inv))], inv.login_owner("u12345@isp.example"),
            [list(keys) for keys in inv._logins])


def test_a_one_percent_reload_checks_only_changed_rows_and_reuses_the_rest(tmp_path, monkeypatch):
    """A reload that edits 1% of rows in place validates those rows only: the others' columns are
    taken from the previous load (the very same id objects), and the result is what a first load
    of the new file gives. An edit that moves lines (a comment inserted) is still read right."""
    from nocpolicy.policy import inventory as inventory_mod
    from nocpolicy.policy import invpatch, invreload
    pol = with_inventory(tmp_path, _rows(30_000))
    a = load_policy(pol)
    checked = []
    real = inventory_mod.check_block
    for mod in (inventory_mod, invreload, invpatch):                           # count the rows validated
        monkeypatch.setattr(mod, "check_block", lambda rows, ix: checked.append(len(rows)) or real(rows, ix))
    lines = (pol / "customers.csv").read_text().split("\n")
    edited = set()
    for n in range(2, 30_000, 100):                                  # every 100th row: 300 rows
        lines[n] = lines[n].replace(f",C{n - 1},", f",Renamed {n - 1},")
        edited.add(f"h{n - 1:06d}")
    lines[5001] = lines[5001].replace("/30", "/31")                  # a prefix too
    lines[9001] = lines[9001].replace("u9000@", "new9000@")          # and a login
    edited |= {"h005000", "h009000"}
    (pol / "customers.csv").write_text("\n".join(lines))
    b = load_policy(pol, previous=a)
    assert b.customers.inventory.changed == edited
    assert sum(checked) == len(edited)                               # only the edited rows were checked
    inv_a, inv_b = a.customers.inventory, b.customers.inventory
    same = [i for i in range(len(inv_b)) if inv_b.ids[i] not in edited]
    assert len(same) == 30_000 - len(edited)
    assert all(inv_b.ids[i] is inv_a.ids[i] for i in same)           # reused, not parsed again
    assert b.customers_by_id["h005000"].prefixes[0].prefixlen == 31
    assert b.customers_by_id["h000101"].name == "Renamed 101"
    assert inv_b.login_owner("new9000@isp.example") == "h009000" and inv_b.login_owner("u9000@isp.example") is None
    assert inv_b.login_owner("u29999@isp.example") == "h029999"
    monkeypatch.undo()
    assert _columns(inv_b) == _columns(load_policy(pol).customers.inventory)
    lines.insert(7000, "# a comment moves every later line")
    (pol / "customers.csv").write_text("\n".join(lines))
    c = load_policy(pol, previous=b)
    assert c.customers_by_id["h029000"].loc.line == 29_003
    assert _columns(c.customers.inventory) == _columns(load_policy(pol).customers.inventory)


def test_a_reload_that_makes_two_rows_overlap_is_refused_naming_both(tmp_path):
    """On a reload the prefix tables are the previous ones updated for the changed rows: a changed
    row that now claims an unchanged row's prefix is still found, and the policy in force kept."""
    pol = with_inventory(tmp_path, _rows(20_000))
    a = load_policy(pol)
    lines = (pol / "customers.csv").read_text().split("\n")
    lines[3001] = lines[3001].replace("10.0.46.224/30", "10.0.0.4/30")       # row h003000 takes h000001's
    (pol / "customers.csv").write_text("\n".join(lines))
    with pytest.raises(PolicyInvalid) as e:
        load_policy(pol, previous=a)
    text = "\n".join(str(p) for p in e.value.problems)
    assert "h003000" in text and "h000001" in text and "overlap" in text
    assert f"{pol / 'customers.csv'}:3002" in text
    assert a.customers.inventory.read_tables is not None              # the previous tables untouched
    assert all(len(t) == 20_000 for t in a.customers.inventory.read_tables.values())
