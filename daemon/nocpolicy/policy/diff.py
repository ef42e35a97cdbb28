"""What changed between two policies, section by section (logged on reload, given to components)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .model import Policy

_ID_SECTIONS = {
    "customers": lambda p: p.customers,
    "plans": lambda p: p.plans,
    "dns.lists": lambda p: p.dns.lists,
    "dns.upstreams": lambda p: p.dns.upstreams,
    "emergency_profiles": lambda p: p.profiles,
    "interfaces": lambda p: p.interfaces,
    "maintenance.windows": lambda p: p.maintenance.windows,
    "control.grants": lambda p: p.control.grants,
}


@dataclass(frozen=True)
class SectionChange:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


@dataclass(frozen=True)
class PolicyChange:
    old_version: str | None
    new_version: str
    sections: dict[str, SectionChange] = field(default_factory=dict)
    settings_changed: tuple[str, ...] = ()   # single-valued sections that differ

    @property
    def initial(self) -> bool:
        return self.old_version is None

    def touches(self, *names: str) -> bool:
        if self.initial:
            return True
        return any(bool(self.sections.get(n)) or n in self.settings_changed for n in names)

    def describe(self) -> str:
        if self.initial:
            return f"initial policy {self.new_version}"
        parts = []
        for name, ch in self.sections.items():
            marks = [f"{verb}{','.join(ids)}" for verb, ids in (("+", ch.added), ("-", ch.removed),
                                                               ("~", ch.changed)) if ids]
            if marks:
                parts.append(f"{name} {' '.join(marks)}")
        parts.extend(f"{s} changed" for s in self.settings_changed)
        return "; ".join(parts) or "no effective change"

    def as_dict(self) -> dict:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "sections": {k: {"added": v.added, "removed": v.removed, "changed": v.changed}
                         for k, v in self.sections.items() if v},
            "settings_changed": list(self.settings_changed),
        }


def diff_policies(old: Policy | None, new: Policy) -> PolicyChange:
    if old is None:
        return PolicyChange(None, new.version)
    sections = {}
    for name, get in _ID_SECTIONS.items():
        if name == "customers" and (hasattr(old.customers, "inventory") or hasattr(new.customers, "inventory")):
            sections[name] = _customers_change(old.customers, new.customers)
            continue
        a = {x.id: x for x in get(old)}
        b = {x.id: x for x in get(new)}
        sections[name] = SectionChange(
            added=tuple(sorted(b.keys() - a.keys())),
            removed=tuple(sorted(a.keys() - b.keys())),
            changed=tuple(sorted(k for k in a.keys() & b.keys() if a[k] != b[k] or _content_changed(name, k, old, new))),
        )
    single = []
    if old.settings != new.settings:
        single.append("settings")
    dns_old = (old.dns.unknown_clients, old.dns.detection_retention, old.dns.log_allowed, old.dns.limits)
    dns_new = (new.dns.unknown_clients, new.dns.detection_retention, new.dns.log_allowed, new.dns.limits)
    if dns_old != dns_new:
        single.append("dns")
    if (old.maintenance.notice, old.maintenance.smtp, old.maintenance.alertmanager) != \
            (new.maintenance.notice, new.maintenance.smtp, new.maintenance.alertmanager):
        single.append("maintenance")
    if old.detect != new.detect:
        single.append("detect")
    if old.control.groups != new.control.groups:
        single.append("control.groups")
    return PolicyChange(old.version, new.version, sections, tuple(single))


def _content_changed(section: str, item_id: str, old: Policy, new: Policy) -> bool:
    """A local list file whose content changed is a changed list even if its entry is the same."""
    return section == "dns.lists" and old.list_digests.get(item_id) != new.list_digests.get(item_id)


def _customers_change(old, new) -> SectionChange:
    """The customers' change when a CSV inventory is involved, without building a Customer per
    row: the YAML customers compared as objects, the inventory rows by their lines (or by the
    ``changed`` set of an inventory read against the old one)."""
    def parts(customers):
        inv = getattr(customers, "inventory", None)
        return {c.id: c for c in getattr(customers, "static", customers)}, inv
    (a, ia), (b, ib) = parts(old), parts(new)
    ids_a = a.keys() | (ia.index.keys() if ia is not None else set())
    ids_b = b.keys() | (ib.index.keys() if ib is not None else set())
    changed = {k for k in a.keys() & b.keys() if a[k] != b[k]}
    if ia is not None and ib is not None:
        both = ia.index.keys() & ib.index.keys()
        if ib.base() is ia:
            changed |= ib.changed & both
        else:
            changed |= {k for k in both if ia.line(ia.index[k]) != ib.line(ib.index[k])}
    changed |= {k for k in ids_a & ids_b if (k in a) != (k in b)}      # moved between YAML and CSV
    return SectionChange(added=tuple(sorted(ids_b - ids_a)), removed=tuple(sorted(ids_a - ids_b)),
                         changed=tuple(sorted(changed)))
