"""nocpolicyctl sub-commands for maintenance (placeholder)."""


def register(sub) -> None:
    pass
