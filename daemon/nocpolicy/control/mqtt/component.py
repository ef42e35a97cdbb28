"""Placeholder: MQTT control plane and fleet (issue 7)."""

from ...component import Component


class MqttBridge(Component):
    name = "mqtt"

    async def start(self) -> None:
        self.set_state("disabled", "not built yet")
