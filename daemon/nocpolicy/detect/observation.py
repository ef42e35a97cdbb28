"""What every input (dnstap, capture, log files) turns into: one observed lookup."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("dnstap", "capture", "logfile")
FORGEABLE = ("capture",)         # responses from these must pair with a query seen earlier


@dataclass(frozen=True, slots=True)
class Observation:
    source: str                  # dnstap | capture | logfile
    client: str                  # the client address (customer side)
    name: str                    # query name, lower-case, no trailing dot
    qtype: int = 1
    response: bool = False       # True: a response (carries the answer section)
    port: int | None = None      # client port, with ``qid`` pairs a response with its query
    qid: int | None = None
    wire: bytes | None = None    # the response message, for its answers (nft blocking)
    server: str | None = None    # capture: the resolver side (query destination, response source)

    @property
    def key(self) -> tuple | None:
        """Identifies one lookup across its query and response (None: cannot pair)."""
        if self.port is None or self.qid is None:
            return None
        return (self.client, self.port, self.qid, self.name)
