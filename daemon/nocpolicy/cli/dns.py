"""nocpolicyctl sub-commands for dns (placeholder)."""


def register(sub) -> None:
    pass
