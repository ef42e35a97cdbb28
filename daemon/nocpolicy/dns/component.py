"""Placeholder DNS guard component (replaced by the real guard)."""

from ..component import Component


class DnsGuard(Component):
    name = "dns"
