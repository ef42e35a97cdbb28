"""nocpolicyctl sub-commands for fleet (placeholder)."""


def register(sub) -> None:
    pass
