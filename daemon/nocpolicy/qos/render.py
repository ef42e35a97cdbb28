"""Plan -> text the kernel tools read (pure; golden-file tested).

* :func:`render_nft` gives one ``nft -f`` script that replaces table
  ``inet nocpolicy`` in a single transaction (add + delete + define: atomic, and
  it works whether or not the table exists).
* :func:`render_tc` gives ``tc -batch`` lines that build an interface's HTB
  tree from scratch (parents before children); :func:`tc_class_line` and
  :func:`tc_leaf_line` are the single lines apply.py uses for a minimal change.
"""

from __future__ import annotations

from .plan import (
    DEFAULT,
    NETCTL,
    NETCTL_PORTS,
    NETCTL_PROTOCOLS,
    PRIORITY,
    EmergencyPlan,
    Entry,
    HtbClass,
    InterfaceTree,
    Plan,
    family,
)
from .upload import filter_lines, ingress_line, redirect_line

TABLE = "nocpolicy"
LEAF_ARGS = {"pfifo": "pfifo limit {limit}", "sfq": "sfq perturb 10 limit {limit}", "fq_codel": "fq_codel"}
QUANTUM = 1514
QUEUE_SECONDS = 0.05          # a FIFO leaf holds about 50 ms at its ceiling (no bufferbloat at low caps)
QUEUE_MIN, QUEUE_MAX = 16, 1000


def leaf_limit(ceil: int) -> int:
    """Packets a FIFO leaf may queue: ~50 ms of full-size packets at the class ceiling."""
    return int(min(QUEUE_MAX, max(QUEUE_MIN, ceil * QUEUE_SECONDS / (QUANTUM * 8))))


def classid(minor: int) -> str:
    return f"1:{minor:x}"


# -- tc ------------------------------------------------------------------------------


def tc_root_line(tree: InterfaceTree) -> str:
    return f"qdisc replace dev {tree.name} root handle 1: htb default {tree.default:x}"


def tc_class_line(dev: str, c: HtbClass, verb: str = "replace") -> str:
    parent = "1:" if c.parent == 0 else classid(c.parent)
    return (f"class {verb} dev {dev} parent {parent} classid {classid(c.minor)} htb "
            f"rate {c.rate}bit ceil {c.ceil}bit prio {c.prio} quantum {QUANTUM}")


def tc_leaf_line(dev: str, c: HtbClass, leaf: str) -> str:
    args = LEAF_ARGS.get(leaf, leaf).format(limit=leaf_limit(c.ceil))
    return f"qdisc replace dev {dev} parent {classid(c.minor)} handle {c.minor:x}: {args}"


def tc_delete_line(dev: str, minor: int) -> str:
    return f"class del dev {dev} classid {classid(minor)}"


def _tree_lines(tree: InterfaceTree, leaf: str) -> list[str]:
    lines = [tc_root_line(tree)]
    for c in tree.classes:
        lines.append(tc_class_line(tree.name, c))
        if c.leaf:
            lines.append(tc_leaf_line(tree.name, c, leaf))
    return lines


def render_tc(plan: Plan) -> str:
    """The whole tc tree, every interface (what a fresh interface needs); with upload caps also
    each ifb's tree and filters and the ingress redirect (the ifb itself: ``ip link add NAME type ifb``)."""
    lines = []
    for tree in plan.interfaces:
        lines.append(f"# {tree.name}: link {tree.rate}bit, leaf {plan.leaf}")
        lines += _tree_lines(tree, plan.leaf)
    for up in plan.uploads:
        lines.append(f"# {up.dev}: uploads through ifb {up.ifb}, link {up.tree.rate}bit, leaf {plan.leaf}")
        lines += _tree_lines(up.tree, plan.leaf)
        lines += filter_lines(up, plan.up_caps)
        lines += [ingress_line(up), redirect_line(up, plan.redirect)]
    return "\n".join(lines) + "\n"


# -- nft -----------------------------------------------------------------------------


def _elements(items: list[str], indent: str = "\t\t") -> str:
    if not items:
        return ""
    body = (",\n" + indent + "\t     ").join(items)
    return f"\n{indent}elements = {{ {body} }}"


def _set(name: str, typ: str, items: list[str], *, interval=False, counter=False, merge=False) -> str:
    flags = []
    if interval:
        flags.append("\t\tflags interval")
    if merge:
        flags.append("\t\tauto-merge")
    if counter:
        flags.append("\t\tcounter")
    head = f"\tset {name} {{\n\t\ttype {typ}\n" + "".join(f + "\n" for f in flags)
    return head.rstrip("\n") + _elements(items) + "\n\t}\n"


def _map(name: str, typ: str, entries: list[Entry]) -> str:
    items = [f"{e.prefix} : {classid(e.minor)}" for e in entries]
    return (f"\tmap {name} {{\n\t\ttype {typ} : classid\n\t\tflags interval\n\t\tcounter"
            + _elements(items) + "\n\t}\n")


def _split(entries) -> tuple[list[Entry], list[Entry]]:
    v4 = [e for e in entries if family(e.prefix) == 4]
    v6 = [e for e in entries if family(e.prefix) == 6]
    return v4, v6


def _netctl_items(services) -> tuple[list[str], list[str]]:
    ports, protos = [], []
    for s in services:
        ports.extend(f"{proto} . {port}" for proto, port in NETCTL_PORTS.get(s, ()))
        protos.extend(NETCTL_PROTOCOLS.get(s, ()))
    return ports, protos


def render_nft(plan: Plan) -> str:
    em: EmergencyPlan | None = plan.emergency
    caps4, caps6 = _split(plan.caps)
    ecaps4, ecaps6 = _split(em.caps if em else ())
    prio4, prio6 = _split(em.priority if em else ())
    dsrc4, dsrc6 = _split(em.dscp_sources if em else ())
    ports, protos = _netctl_items(plan.network_control)
    out = [f"# nocpolicy enforcement plan: {'emergency ' + em.profile if em else 'normal'}",
           f"add table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    out.append(_set("shaped", "ifname", [f'"{t.name}"' for t in plan.interfaces]))
    out.append(_set("emergency_ifs", "ifname", [f'"{n}"' for n in (em.scope if em else ())]))
    out.append(_set("netctl_ports", "inet_proto . inet_service", ports))
    out.append(_map("caps4", "ipv4_addr", caps4))
    out.append(_map("caps6", "ipv6_addr", caps6))
    out.append(_map("ecaps4", "ipv4_addr", ecaps4))
    out.append(_map("ecaps6", "ipv6_addr", ecaps6))
    out.append(_set("priority4", "ipv4_addr", [e.prefix for e in prio4], interval=True, counter=True, merge=True))
    out.append(_set("priority6", "ipv6_addr", [e.prefix for e in prio6], interval=True, counter=True, merge=True))
    out.append(_set("dscp_values", "dscp", [str(v) for v in (em.dscp_values if em else ())]))
    out.append(_set("dscp_sources4", "ipv4_addr", [e.prefix for e in dsrc4], interval=True, merge=True))
    out.append(_set("dscp_sources6", "ipv6_addr", [e.prefix for e in dsrc6], interval=True, merge=True))
    nc = classid(NETCTL)
    pr = classid(PRIORITY)
    classify = [
        "\tchain classify {",
        "\t\ttype filter hook postrouting priority mangle; policy accept;",
        "\t\toifname != @shaped return",
        f"\t\tmeta l4proto . th dport @netctl_ports meta priority set {nc} accept",
        f"\t\tmeta l4proto . th sport @netctl_ports meta priority set {nc} accept",
    ]
    if protos:
        classify.append(f"\t\tmeta l4proto {{ {', '.join(protos)} }} meta priority set {nc} accept")
    classify += [
        "\t\toifname @emergency_ifs jump emergency",
        "\t\tmeta priority set ip daddr map @caps4 accept",
        "\t\tmeta priority set ip6 daddr map @caps6 accept",
        f"\t\tmeta priority set {classid(DEFAULT)}",
        "\t}",
        "",
        "\tchain emergency {",
        f"\t\tip saddr @priority4 meta priority set {pr} accept",
        f"\t\tip daddr @priority4 meta priority set {pr} accept",
        f"\t\tip6 saddr @priority6 meta priority set {pr} accept",
        f"\t\tip6 daddr @priority6 meta priority set {pr} accept",
        f"\t\tip saddr @dscp_sources4 ip dscp @dscp_values meta priority set {pr} accept",
        f"\t\tip6 saddr @dscp_sources6 ip6 dscp @dscp_values meta priority set {pr} accept",
        "\t\tmeta priority set ip daddr map @ecaps4 accept",
        "\t\tmeta priority set ip6 daddr map @ecaps6 accept",
        "\t}",
    ]
    out.append("\n".join(classify))
    out.append("}")
    return "\n".join(out) + "\n"


def rule_summary(plan: Plan) -> dict:
    """A compact, diffable description of the rules (for audit records and dry runs)."""
    em = plan.emergency
    return {
        "interfaces": {t.name: len(t.classes) for t in plan.interfaces},
        "caps": [f"{e.prefix}->{classid(e.minor)}" for e in plan.caps],
        "emergency": None if em is None else {
            "profile": em.profile, "scope": list(em.scope),
            "priority": [f"{e.prefix} ({e.note})" for e in em.priority],
            "dscp": {"values": list(em.dscp_values), "sources": [e.prefix for e in em.dscp_sources]},
            "caps": [f"{e.prefix}->{classid(e.minor)}" for e in em.caps],
        },
    }


def rule_lines(plan: Plan) -> list[str]:
    """One line per rule element, for a readable diff (``+``/``-``) between two plans."""
    lines = []
    for t in plan.interfaces:
        for c in t.classes:
            lines.append(f"tc {t.name} class {classid(c.minor)} {c.name} rate {c.rate} ceil {c.ceil} prio {c.prio}")
    lines += [f"nft caps {e.prefix} -> {classid(e.minor)} ({e.note})" for e in plan.caps]
    for up in plan.uploads:
        lines += [f"tc {up.ifb} class {classid(c.minor)} {c.name} rate {c.rate} ceil {c.ceil} prio {c.prio}"
                  for c in up.tree.classes]
    lines += [f"tc upload caps {e.prefix} -> {classid(e.minor)} ({e.note})" for e in plan.up_caps]
    em = plan.emergency
    if em is not None:
        lines.append(f"nft emergency profile {em.profile} ({em.category}) on {', '.join(em.scope)}")
        lines += [f"nft priority {e.prefix} ({e.note})" for e in em.priority]
        lines += [f"nft dscp {v} trusted" for v in em.dscp_values]
        lines += [f"nft dscp source {e.prefix} ({e.note})" for e in em.dscp_sources]
        lines += [f"nft emergency caps {e.prefix} -> {classid(e.minor)} ({e.note})" for e in em.caps]
    return lines


def diff_lines(old: Plan | None, new: Plan | None) -> tuple[list[str], list[str]]:
    """(added, removed) rule lines between two plans."""
    a = set(rule_lines(old)) if old else set()
    b = set(rule_lines(new)) if new else set()
    order = {line: i for i, line in enumerate((rule_lines(new) if new else []) + (rule_lines(old) if old else []))}
    return sorted(b - a, key=order.get), sorted(a - b, key=order.get)
