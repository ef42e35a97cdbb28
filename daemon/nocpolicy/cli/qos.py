"""nocpolicyctl sub-commands for qos (placeholder)."""


def register(sub) -> None:
    pass
