"""Placeholder: emergency priority and utilisation limits (issue 5)."""

from ..component import Component


class Enforcer(Component):
    name = "qos"

    async def start(self) -> None:
        self.set_state("disabled", "not built yet")
