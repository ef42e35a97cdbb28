"""DNS guard: wire (hot-path parse), match, verdict, lists, server, upstream."""
