"""nocpolicyctl sub-commands for detect (placeholder)."""


def register(sub) -> None:
    pass
