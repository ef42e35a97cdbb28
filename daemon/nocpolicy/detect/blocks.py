"""The active blocks a detection produces (pure state, no I/O).

* :class:`NameBlock` -- a list entry that was looked up, published in the RPZ
  for ``block_for`` after the last lookup;
* :class:`AddrBlock` -- a C&C address seen in an answer, blocked (nftables) for
  the customer whose client looked it up, for ``block_for``.

Times are Unix seconds so the state survives restarts (the component persists it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NAME_KINDS = ("subtree", "exact", "wild")


@dataclass(frozen=True, slots=True)
class NameBlock:
    entry: str                 # the list entry, as matched: evil.example, *.evil.example
    kind: str                  # subtree (the name and below) | exact | wild (strictly below)
    cls: str                   # mandatory | security | optional
    list: str
    action: str = "nxdomain"   # nxdomain | nodata | refused | sinkhole
    sinkhole_a: str | None = None
    sinkhole_aaaa: str | None = None
    expires: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.cls, self.entry)


@dataclass(frozen=True, slots=True)
class AddrBlock:
    customer: str
    address: str
    cls: str
    list: str
    expires: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.customer, self.address)


def entry_kind(entry: str, list_format: str | None) -> tuple[str, str]:
    """(kind, name) of a matched list entry: RPZ and hosts entries are exact, ``*.x`` is wild."""
    if entry.startswith("*."):
        return "wild", entry[2:]
    if list_format in ("rpz", "hosts"):
        return "exact", entry
    return "subtree", entry


class ActiveBlocks:
    """Name and address blocks with expiry. ``add_*`` return what changed for the publishers."""

    def __init__(self):
        self.names: dict[tuple[str, str], NameBlock] = {}
        self.addrs: dict[tuple[str, str], AddrBlock] = {}

    def add_name(self, block: NameBlock) -> bool:
        """True if the published set changed (a new entry); a repeat only extends the expiry."""
        old = self.names.get(block.key)
        self.names[block.key] = block if old is None else replace(old, expires=max(old.expires, block.expires))
        return old is None

    def add_addr(self, block: AddrBlock, block_for: float) -> bool:
        """True if the kernel should be told: a new address, or one whose timeout is half spent."""
        old = self.addrs.get(block.key)
        now = block.expires - block_for
        if old is not None and old.expires - now > block_for / 2:
            return False
        self.addrs[block.key] = block
        return True

    def expire(self, now: float) -> tuple[list[NameBlock], list[AddrBlock]]:
        names = [b for b in self.names.values() if b.expires <= now]
        addrs = [b for b in self.addrs.values() if b.expires <= now]
        for b in names:
            del self.names[b.key]
        for b in addrs:
            del self.addrs[b.key]
        return names, addrs

    def drop_customer_security(self, customers: set[str]) -> list[AddrBlock]:
        """Opted-out customers lose their security-class address blocks."""
        gone = [b for b in self.addrs.values() if b.customer in customers and b.cls != "mandatory"]
        for b in gone:
            del self.addrs[b.key]
        return gone
