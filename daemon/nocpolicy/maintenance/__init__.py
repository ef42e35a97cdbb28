"""Maintenance and fault windows and their notices (Art. 24(1)(2)), fault contacts (Art. 24(3)(4))."""
