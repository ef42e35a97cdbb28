"""X-MAINTNOTE-OBJECT-ID carries the customer's affected services (its prefixes), never the account.

The BCOP maintenance-notification format puts the customer account in
X-MAINTNOTE-ACCOUNT and one X-MAINTNOTE-OBJECT-ID per affected service or
circuit; a consumer keys its inventory on the object ids. So a window scoped by
tag, customer or node names every prefix of the customer; one scoped by prefix
names only the prefixes it overlaps; the account id stands in only for a
customer with no prefix on record (docs/maintenance.md, "Notices").
"""

from __future__ import annotations

import datetime as dt
import ipaddress

import icalendar

from nocpolicy.maintenance.notice import NoticeData, calendar
from nocpolicy.maintenance.scope import objects
from nocpolicy.policy.customers import Customer
from nocpolicy.policy.maintenance import Scope

NET = ipaddress.ip_network
C = Customer(id="c1001", name="Yamada", prefixes=(NET("192.0.2.0/26"), NET("2001:db8:1001::/48")),
             tags=("fiber-biz",), nodes=("tokyo-east-1",))


def test_tag_customer_and_node_scopes_name_every_prefix_of_the_customer():
    every = ("192.0.2.0/26", "2001:db8:1001::/48")
    assert objects(Scope(tags=("fiber-biz",)), C) == every
    assert objects(Scope(customers=("c1001",)), C) == every
    assert objects(Scope(nodes=("tokyo-east-1",)), C) == every


def test_a_prefix_scope_names_only_the_prefixes_it_touches():
    assert objects(Scope(prefixes=(NET("192.0.2.0/24"),)), C) == ("192.0.2.0/26",)
    assert objects(Scope(prefixes=(NET("2001:db8:1001:5::/64"),)), C) == ("2001:db8:1001::/48",)


def test_the_account_stands_in_only_for_a_customer_without_prefixes():
    bare = Customer(id="c2001", name="No prefixes", tags=("fiber-biz",))
    assert objects(Scope(tags=("fiber-biz",)), bare) == ("c2001",)


def test_a_tag_scoped_notice_carries_the_account_and_the_prefixes_in_their_own_properties():
    t = dt.datetime(2026, 1, 20, 1, tzinfo=dt.UTC)
    n = NoticeData(window_id="mw-tag", window_kind="planned", notice_kind="notice", sequence=0, start=t,
                   end=t + dt.timedelta(hours=2), reason_ja="工事", reason_en="works", impact="OUTAGE",
                   scope_text="tags fiber-biz", customer_id=C.id, customer_name=C.name,
                   objects=objects(Scope(tags=("fiber-biz",)), C), provider="Example Net", sender="noc@isp.example",
                   recipients=("noc@yamada.example",), message_id="<mw-tag.notice.0.c1001@isp.example>", created=t)
    ev = icalendar.Calendar.from_ical(calendar(n)).walk("VEVENT")[0]
    assert str(ev["X-MAINTNOTE-ACCOUNT"]) == "c1001"
    objs = ev["X-MAINTNOTE-OBJECT-ID"]
    assert [str(o) for o in (objs if isinstance(objs, list) else [objs])] == ["192.0.2.0/26", "2001:db8:1001::/48"]
