"""The ``control:`` section: who may issue which command over MQTT, fleet membership."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from .fields import Obj, as_id, as_text, duration_range, list_of, obj, size_range
from .nodes import Loc


@dataclass(frozen=True)
class Grant:
    identity: str              # MQTT username (or certificate CN)
    verbs: tuple[str, ...]     # command names, or "*" for all
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.identity


@dataclass(frozen=True)
class ControlSettings:
    grants: tuple[Grant, ...] = ()
    groups: dict = field(default_factory=dict, hash=False)   # group name -> node names
    state_part_size: int = 8 << 20     # controller: a fleet state snapshot larger than this goes in parts
    state_part_wait: float = 60.0      # agent: how long the parts of one snapshot may take to arrive
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)
    locs: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def verbs_for(self, identity: str) -> frozenset[str]:
        """Every verb granted to ``identity`` (``"*"`` stands for all)."""
        return frozenset(v for g in self.grants if g.identity == identity for v in g.verbs)

    def allows(self, identity: str, verb: str) -> bool:
        verbs = self.verbs_for(identity)
        return "*" in verbs or verb in verbs

    @cached_property
    def fleet_nodes(self) -> tuple[str, ...]:
        """Every node named in a group: the fleet a controller plans for, sorted (computed once per
        policy: a controller asks at every ack of 1,000 nodes)."""
        return tuple(sorted({n for members in self.groups.values() for n in members}))

    def groups_of(self, node: str) -> tuple[str, ...]:
        return tuple(sorted(g for g, members in self.groups.items() if node in members))


def _grant(o: Obj) -> Grant:
    return Grant(identity=o.req("identity", as_id),     # one MQTT topic level: no "/", "+", "#"
                 verbs=o.req("verbs", list_of(as_text, min_items=1, unique=True)) or (),
                 loc=o.node.loc)


def _groups(node, problems):
    from .fields import Invalid, convert
    if not isinstance(node.value, dict):
        raise Invalid("expected a mapping of group name to a list of node names")
    out = {}
    for name, members in node.value.items():
        out[name] = convert(members, list_of(as_id, unique=True), problems) or ()
    return out


def _control(o: Obj) -> ControlSettings:
    out = ControlSettings(
        grants=o.get("grants", list_of(obj(_grant)), ()) or (),
        groups=o.get("groups", _groups, {}) or {},
        state_part_size=o.get("state_part_size", size_range(1024, 31 << 20), 8 << 20),
        state_part_wait=o.get("state_part_wait", duration_range(1.0, 3600.0), 60.0),
        loc=o.node.loc, locs=o.locs,
    )
    nodes = set(out.fleet_nodes)
    for i, g in enumerate(out.grants):
        if g.identity in nodes:   # the broker lets a node write its own status/ack topics
            o.problems.add(g.loc, f"{o.node.path}.grants[{i}].identity",
                           f"{g.identity!r} is also a node in control.groups; a command identity "
                           "must not be a node name (nodes may write their own status and ack)")
    return out


read_control = obj(_control)
