"""NICT advisories (Art. 45(3)): intake, attribution, cases, customer alerts. See docs/advisories.md."""
