"""Customers and plans: who is served, from which prefixes, with which caps and contact."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from itertools import islice, repeat
from operator import and_, lt, or_, rshift, sub

from .fields import (
    Invalid,
    Obj,
    Problems,
    as_bool,
    as_email,
    as_id,
    as_prefix,
    as_rate,
    as_str,
    as_text,
    as_url,
    list_of,
    obj,
    one_of,
)
from .nodes import Loc, Node

Prefix = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Contact:
    """The fault contact (障害時連絡先, Art. 24(3)) registered in the contract."""

    email: str | None = None
    webhook: str | None = None
    mqtt_topic: str | None = None
    language: str = "ja+en"


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    prefixes: tuple[Prefix, ...] = ()
    tags: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    plan: str | None = None
    public_safety: bool = False
    contact: Contact = Contact()
    security_optout: bool = False
    optional_lists: tuple[str, ...] = ()
    logins: tuple[str, ...] = ()       # ids dynamic sessions name this customer by (docs/sessions.md)
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


@dataclass(frozen=True)
class Plan:
    id: str
    name: str
    down: int          # bit/s towards the customer, normal times
    up: int | None = None
    emergency_down: int | None = None   # tighter cap while an emergency is active
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)


MQTT_TOPIC_MAX = 65535       # bytes of UTF-8 (MQTT 3.1.1 / 5 string limit)
# the daemon's own control plane (docs/mqtt.md): never a customer topic (a notice there could pass for a
# command, a reply or a node's status)
CONTROL_TOPICS = tuple(f"nocpolicy/v1/{leaf}/" for leaf in ("cmd", "reply", "nodes", "events", "fleet"))


def as_mqtt_topic(node: Node, _p=None) -> str:
    """A topic to publish notices to: no wildcards, no NUL, not $-reserved nor in the control plane."""
    s = as_str(node)
    if not s:
        raise Invalid("must not be empty")
    if "+" in s or "#" in s:
        raise Invalid(f"{s!r} contains an MQTT wildcard ('+' or '#'); a notice is published to one exact topic")
    if "\x00" in s:
        raise Invalid("contains a NUL character")
    if len(s.encode("utf-8")) > MQTT_TOPIC_MAX:
        raise Invalid(f"is {len(s.encode('utf-8'))} bytes of UTF-8; MQTT allows at most {MQTT_TOPIC_MAX}")
    if s.startswith("$"):
        raise Invalid(f"{s!r} starts with '$' (reserved by the broker, e.g. $SYS)")
    for root in CONTROL_TOPICS:
        if s.startswith(root) or s == root.rstrip("/"):
            raise Invalid(f"{s!r} is inside the daemon's control plane ({root}...); choose another topic "
                          "(e.g. nocpolicy/v1/contacts/<customer>)")
    return s


def _contact(o: Obj) -> Contact:
    c = Contact(
        email=o.get("email", as_email, None),
        webhook=o.get("webhook", as_url("http", "https"), None),
        mqtt_topic=o.get("mqtt_topic", as_mqtt_topic, None),
        language=o.get("language", one_of("ja", "en", "ja+en"), "ja+en") or "ja+en",
    )
    return c


def _customer(o: Obj) -> Customer:
    return Customer(
        id=o.req("id", as_id),
        name=o.req("name", as_text),
        prefixes=o.get("prefixes", list_of(as_prefix, unique=True), ()) or (),
        tags=o.get("tags", list_of(as_id, unique=True), ()) or (),
        nodes=o.get("nodes", list_of(as_id, unique=True), ()) or (),
        plan=o.get("plan", as_id, None),
        public_safety=o.get("public_safety", as_bool, False) or False,
        contact=o.get("contact", obj(_contact), Contact()) or Contact(),
        security_optout=o.get("security_optout", as_bool, False) or False,
        optional_lists=o.get("optional_lists", list_of(as_id, unique=True), ()) or (),
        logins=o.get("logins", list_of(as_str, unique=True), ()) or (),
        loc=o.node.loc,
        locs=o.locs,
    )


def _plan(o: Obj) -> Plan:
    plan = Plan(
        id=o.req("id", as_id),
        name=o.get("name", as_str, "") or "",
        down=o.req("down", as_rate),
        up=o.get("up", as_rate, None),
        emergency_down=o.get("emergency_down", as_rate, None),
        loc=o.node.loc,
        locs=o.locs,
    )
    if plan.down and plan.emergency_down and plan.emergency_down > plan.down:
        o.problems.add(o.locs["emergency_down"], f"{o.node.path}.emergency_down",
                       f"the emergency cap ({plan.emergency_down} bit/s) is above the normal cap "
                       f"down ({plan.down} bit/s): an emergency may only restrict further")
    return plan


read_customers = list_of(obj(_customer))
read_plans = list_of(obj(_plan))


def check_prefix_overlaps(customers, problems: Problems, inventory=None) -> None:
    """Two customers may not claim overlapping prefixes: longest-prefix match would be ambiguous.
    ``customers`` are YAML customers; ``inventory`` (invtable.Inventory) adds its packed prefixes."""
    if inventory is not None and (_disjoint_delta(customers, inventory) or _disjoint_tables(customers, inventory)):
        return
    owners: list = list(inventory.ids) if inventory is not None else []     # owner index -> row or Customer
    n_rows = len(owners)
    keys: dict[int, list[int]] = {4: [], 6: []}
    if inventory is not None:           # packed: (start, length, owner) as one sortable int per prefix
        keys = {4: inventory.packed.keys(False), 6: inventory.packed.keys(True)}
    for c in customers:
        for p in c.prefixes:
            keys[p.version].append((((int(p.network_address) << 8) | (255 - p.prefixlen)) << 24) | len(owners))
        owners.append(c)
    if len(owners) >= 1 << 24:
        problems.add(Loc("?", 0), "customers", f"{len(owners)} customers: at most {(1 << 24) - 1}")
        return

    def describe(o: int) -> tuple[str, Loc, str]:
        if o < n_rows:
            return owners[o], inventory.loc(o), ""
        c = owners[o]
        return c.id, c.locs.get("prefixes", c.loc), ""

    for version, bits in ((4, 32), (6, 128)):
        _overlaps(sorted(keys[version]), bits, describe, problems)


def _disjoint_tables(customers, inventory) -> bool:
    """No prefix overlaps another, checked on the per-length tables read with the inventory: a
    prefix of length L overlaps one of a shorter length S iff its first L - S... bits, shifted,
    are a key of that table (one C-speed pass per pair of lengths in use). False: maybe an
    overlap (the sorted check then finds and reports it)."""
    if inventory.tables is None or not inventory.tables_exact:
        return False
    tables = [(code >> 8, code & 0xFF, t) for code, t in inventory.tables.items()]
    small: dict[tuple[int, int], dict[int, str]] = {}
    for c in customers:                          # the YAML customers' (few) prefixes
        for p in c.prefixes:
            d = small.setdefault((p.version == 6, p.prefixlen), {})
            key = int(p.network_address) >> (p.max_prefixlen - p.prefixlen)
            if key in d:
                return False
            d[key] = c.id
    tables += [(v6, plen, d) for (v6, plen), d in small.items()]
    for i, (f1, l1, t1) in enumerate(tables):
        for f2, l2, t2 in tables[i + 1:]:
            if f1 != f2:
                continue
            if l1 == l2:
                if not t1.keys().isdisjoint(t2.keys()):
                    return False
                continue
            (ls, short), (ll, long) = sorted(((l1, t1), (l2, t2)), key=lambda x: x[0])
            if len(short) << (ll - ls) < len(long):      # few short prefixes (YAML): the keys under them
                d = ll - ls
                if any(not long.keys().isdisjoint(range(k << d, (k + 1) << d)) for k in short):
                    return False
            elif any(map(short.__contains__, map(rshift, long, repeat(ll - ls)))):
                return False
    return True


PROBE_BUDGET = 1 << 20     # keys probed by _disjoint_delta before it leaves the check to a full pass


def _disjoint_delta(customers, inventory) -> bool:
    """No prefix overlaps another, checked for an inventory patched from a previous load
    (policy/invpatch.py) whose tables were disjoint: only the changed rows' prefixes
    (``delta_probes``) and the YAML customers' are probed in the tables of the other lengths
    (a shorter table: the key shifted; a longer one: the keys under the prefix, within a
    budget). False: maybe an overlap, or too costly to probe (the full check decides)."""
    probes = getattr(inventory, "delta_probes", None)
    if probes is None or inventory.tables is None or not inventory.tables_exact:
        return False
    small: dict[int, dict[int, int]] = {}
    yaml = []
    for c in customers:
        for p in c.prefixes:
            code = (0x100 if p.version == 6 else 0) | p.prefixlen
            key = int(p.network_address) >> (p.max_prefixlen - p.prefixlen)
            if key in small.setdefault(code, {}):
                return False
            small[code][key] = 1
            yaml.append((code, int(p.network_address)))
    tables = [(code, t, False) for code, t in inventory.tables.items()] + \
             [(code, t, True) for code, t in small.items()]
    budget = PROBE_BUDGET
    for n, (code, value) in enumerate(probes + yaml):
        is_yaml, plen = n >= len(probes), code & 0xFF
        key = value >> ((128 if code & 0x100 else 32) - plen)
        for tcode, t, t_yaml in tables:
            if tcode >> 8 != code >> 8 or (tcode == code and t_yaml == is_yaml):
                continue        # the other family; the probe's own table (duplicates: tables_exact)
            tlen = tcode & 0xFF
            if tlen <= plen:
                hit = (key >> (plen - tlen)) in t
            else:
                budget -= 1 << (tlen - plen)
                if budget < 0:
                    return False
                hit = not t.keys().isdisjoint(range(key << (tlen - plen), (key + 1) << (tlen - plen)))
            if hit:
                return False
    return True


def _overlaps(keys: list[int], bits: int, describe, problems: Problems) -> None:
    """Report each prefix that overlaps an earlier one (keys sorted: first address, longest first)."""
    if _disjoint(keys, bits):
        return
    stack: list[tuple[int, int, int, int]] = []      # (last address, owner, start, length)
    for k in keys:
        owner, plen, start = k & 0xFFFFFF, 255 - ((k >> 24) & 0xFF), k >> 32
        while stack and start > stack[-1][0]:
            stack.pop()
        if stack:
            _, q_owner, q_start, q_len = stack[0]
            cid, loc, _ = describe(owner)
            p, q = _net(start, plen, bits), _net(q_start, q_len, bits)
            if q_owner == owner:
                why = "is listed twice" if q == p else f"lies inside {q} of the same customer (redundant)"
                problems.add(loc, f"customers[id={cid}].prefixes", f"{p} {why}")
            else:
                did, dloc, _ = describe(q_owner)
                problems.add(loc, f"customers[id={cid}].prefixes", f"{p} overlaps {q} of customer {did!r} ({dloc})")
        stack.append((start | ((1 << (bits - plen)) - 1), owner, start, plen))


def _disjoint(keys: list[int], bits: int) -> bool:
    """No prefix overlaps another (each one ends before the next one starts), checked at C speed."""
    masks = [(1 << (bits - n)) - 1 for n in range(bits + 1)]
    starts = list(map(rshift, keys, repeat(32)))
    lens = map(sub, repeat(255), map(and_, map(rshift, keys, repeat(24)), repeat(0xFF)))
    ends = map(or_, starts, map(masks.__getitem__, lens))
    return all(map(lt, ends, islice(starts, 1, None)))


def _net(start: int, plen: int, bits: int):
    return (ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network)((start, plen))
