"""Control plane: commands, the admin API, and (later) MQTT."""
