"""The immutable policy snapshot every component is configured with."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from .advisories import AdvisorySettings
from .control import ControlSettings
from .customers import Customer, Plan
from .detect import DetectSettings
from .dnsconf import DnsSettings
from .emergency import Interface, Profile
from .fields import Obj, as_id, as_text, as_timezone
from .invtable import CustomerIndex
from .maintenance import MaintenanceSettings
from .nodes import Loc
from .sessions import SessionSettings
from .suspension import SuspensionSettings


@dataclass(frozen=True)
class Settings:
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    provider: str = "nocpolicy"        # operator name shown in notices (X-MAINTNOTE-PROVIDER)
    timezone: str = "Asia/Tokyo"
    loc: Loc = field(default=Loc("?", 0), compare=False, repr=False)


def read_settings(o: Obj) -> Settings:
    d = Settings()
    return Settings(
        node=o.get("node", as_id, d.node) or d.node,
        provider=o.get("provider", as_text, d.provider) or d.provider,
        timezone=o.get("timezone", as_timezone, d.timezone) or d.timezone,
        loc=o.node.loc,
    )


@dataclass(frozen=True, eq=False)
class Policy:
    """One validated policy directory. Never mutated: a reload builds a new one."""

    directory: str
    version: str                      # content hash of the YAML files
    loaded_at: dt.datetime
    files: tuple[str, ...]
    settings: Settings
    customers: Sequence[Customer]      # a tuple, or invtable.Customers with a CSV inventory
    plans: tuple[Plan, ...]
    dns: DnsSettings
    profiles: tuple[Profile, ...]
    interfaces: tuple[Interface, ...]
    maintenance: MaintenanceSettings
    control: ControlSettings
    detect: DetectSettings = DetectSettings()
    sessions: SessionSettings = SessionSettings()
    suspension: SuspensionSettings = SuspensionSettings()
    advisories: AdvisorySettings = AdvisorySettings()
    list_digests: dict[str, str] = field(default_factory=dict, hash=False)  # list id -> sha256 of its local file

    @cached_property
    def customers_by_id(self) -> Mapping[str, Customer]:
        inventory = getattr(self.customers, "inventory", None)
        if inventory is not None:        # a CSV inventory: its customers are built when asked for
            return CustomerIndex({c.id: c for c in self.customers.static}, inventory)
        return {c.id: c for c in self.customers}

    @cached_property
    def plans_by_id(self) -> dict[str, Plan]:
        return {p.id: p for p in self.plans}

    @cached_property
    def profiles_by_id(self) -> dict[str, Profile]:
        return {p.id: p for p in self.profiles}

    @cached_property
    def lists_by_id(self):
        return {bl.id: bl for bl in self.dns.lists}

    def customer_for(self, address: str) -> Customer | None:
        """Longest-prefix match, slow path (CLI, tests). The DNS hot path has its own index."""
        ip = ipaddress.ip_address(address)
        best, best_len = None, -1
        for c in self.customers:
            for p in c.prefixes:
                if p.version == ip.version and ip in p and p.prefixlen > best_len:
                    best, best_len = c, p.prefixlen
        return best

    def summary(self) -> dict:
        return {
            "version": self.version,
            "directory": self.directory,
            "loaded_at": self.loaded_at.isoformat(),
            "files": list(self.files),
            "node": self.settings.node,
            "customers": len(self.customers),
            "plans": len(self.plans),
            "lists": len(self.dns.lists),
            "upstreams": len(self.dns.upstreams),
            "emergency_profiles": len(self.profiles),
            "interfaces": len(self.interfaces),
            "maintenance_windows": len(self.maintenance.windows),
        }
