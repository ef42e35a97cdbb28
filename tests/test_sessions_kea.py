"""Kea memfile lease files: following appends, cut lines, releases, LFC rewrites, v6 PD."""

from __future__ import annotations

import os

from nocpolicy.policy.sessions import CustomerFrom, KeaFile
from nocpolicy.sessions.book import Book
from nocpolicy.sessions.kea import LeaseFollower
from nocpolicy.sessions.table import LiveTable

H4 = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
H6 = ("address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,fqdn_fwd,"
      "fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source\n")
NOW = 1_800_000_000


def v4(addr, mac, host, valid=3600, expire=NOW + 3000, state=0):
    return f"{addr},{mac},01:{mac},{valid},{expire},1,0,0,{host},{state},\n"


def v6(addr, plen, ltype, duid, host, valid=3600, expire=NOW + 3000, state=0):
    return f"{addr},{duid},{valid},{expire},1,1800,{ltype},1,{plen},0,0,{host},,{state},,1,0\n"


def follower(path, attribute="hostname", regex=None):
    import re
    table = LiveTable()
    book = Book(table)
    spec = KeaFile(str(path), CustomerFrom(attribute, re.compile(regex) if regex else None))
    f = LeaseFollower(spec, book.apply, lambda: float(NOW))
    return f, table, book


def test_v4_leases_followed_through_cut_lines_releases_and_lfc(tmp_path):
    path = tmp_path / "kea-leases4.csv"
    path.write_text(H4 + v4("10.20.0.5", "02:00:00:00:00:05", "c1001.home"))
    f, table, book = follower(path, regex=r"^(?P<id>[^.]+)\.")
    f.start()
    f.poll()
    assert table.lookup("10.20.0.5").customer == "c1001"
    line = v4("10.20.0.6", "02:00:00:00:00:06", "c1002.home")
    with open(path, "a") as fh:                    # Kea is mid-write: half a line
        fh.write(line[:17])
    f.poll()
    assert not table.contains("10.20.0.6")
    with open(path, "a") as fh:
        fh.write(line[17:] + "garbage,line\n")
    f.poll()
    assert table.lookup("10.20.0.6").customer == "c1002" and f.counts["bad"] == 1
    # LFC: the file is moved aside and a fresh one started; earlier leases stay known
    os.rename(path, str(path) + ".2")
    path.write_text(H4 + v4("10.20.0.7", "02:00:00:00:00:07", "c1003.home"))
    f.poll()
    assert f.counts["rotations"] == 1
    assert table.contains("10.20.0.5") and table.contains("10.20.0.7")
    with open(path, "a") as fh:                    # release: valid_lifetime 0
        fh.write(v4("10.20.0.5", "02:00:00:00:00:05", "c1001.home", valid=0, expire=NOW - 10))
        fh.write(v4("10.20.0.7", "02:00:00:00:00:07", "c1003.home", state=2))   # reclaimed
    f.poll()
    assert not table.contains("10.20.0.5") and not table.contains("10.20.0.7")
    assert table.contains("10.20.0.6")


def test_restart_reads_lfc_outputs_first(tmp_path):
    path = tmp_path / "kea-leases4.csv"
    (tmp_path / "kea-leases4.csv.1").write_text(H4 + v4("10.20.0.9", "02:00:00:00:00:09", "c1009"))
    path.write_text(H4)
    f, table, _ = follower(path)
    f.start()
    f.poll()
    assert table.lookup("10.20.0.9").customer == "c1009"


def test_v6_addresses_and_delegated_prefixes(tmp_path):
    path = tmp_path / "kea-leases6.csv"
    path.write_text(H6 + v6("2001:db8:1::10", 128, 0, "00:01:00:01:aa", "c2001")
                    + v6("2001:db8:ff00:100::", 56, 2, "00:01:00:01:aa", "c2001")
                    + v6("2001:db8:1::99", 128, 1, "00:01:00:01:bb", "tmp"))    # IA_TA: ignored
    f, table, _ = follower(path)
    f.start()
    f.poll()
    assert table.lookup("2001:db8:ff00:1ab::1").customer == "c2001"
    assert table.lookup("2001:db8:1::10").customer == "c2001"
    assert not table.contains("2001:db8:1::99")
    assert len(table) == 2


def test_expired_lease_is_not_live_and_customer_from_hwaddr(tmp_path):
    path = tmp_path / "leases.csv"
    path.write_text(H4 + v4("10.30.0.1", "02:aa:00:00:00:01", "x", expire=NOW - 1)
                    + v4("10.30.0.2", "02:aa:00:00:00:02", "y"))
    f, table, _ = follower(path, attribute="hwaddr")
    f.start()
    f.poll()
    assert not table.contains("10.30.0.1")
    assert table.lookup("10.30.0.2").customer == "02:aa:00:00:00:02"
