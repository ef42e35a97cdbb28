"""Exports of attack records for ICT-ISAC (Art. 45(1)(2)): the consent gate. See docs/advisories.md."""
