"""Placeholder: passive C&C detection from resolver logs (issue 8)."""

from ..component import Component


class Detector(Component):
    name = "detect"

    async def start(self) -> None:
        self.set_state("disabled", "not built yet")
