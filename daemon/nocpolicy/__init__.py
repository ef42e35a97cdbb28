"""nocpolicy: carries out the operational clauses of an ISP service agreement."""

__version__ = "0.1.0"
