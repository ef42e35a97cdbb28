"""Placeholder: maintenance and fault windows, notices (issue 6)."""

from ..component import Component


class Maintenance(Component):
    name = "maintenance"

    async def start(self) -> None:
        self.set_state("disabled", "not built yet")
