"""MQTT control plane and fleet: one controller, an agent per router, acknowledged state."""
