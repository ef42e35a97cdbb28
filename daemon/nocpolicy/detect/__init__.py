"""Passive C&C detection from the query logs of a resolver nocpolicy does not run (Art. 45(4))."""
