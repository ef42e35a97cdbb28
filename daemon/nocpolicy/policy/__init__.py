"""Policy: the declarative inventory operators keep in git (model, load, diff)."""
