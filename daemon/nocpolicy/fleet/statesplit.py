"""Large fleet state snapshots in parts (pure: no I/O, times passed in).

Controller: :func:`split` cuts a snapshot's entries into parts whose entries' JSON stays under the
part size (``control.state_part_size``, 8 MiB by default); a snapshot that fits is not split.

Agent: :class:`Assembler` collects the parts of one version per stream. Only when every part of
that version is in, consistent (same ``parts`` and ``count``, no key in two parts, the count
right) does it hand back the whole snapshot, which is then checked whole and applied like any
snapshot: a partial or mixed-version snapshot is never applied. A part of an older version than
the one being assembled is ignored; one of a newer version abandons the older assembly; an
assembly still incomplete after the part wait is abandoned. Abandoned = refused ``incomplete``
(counted), and what the agent holds stays as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from .statewire import MAX_PARTS, StateMsg, StateRefused

MAX_ASSEMBLY_ENTRIES = 5_000_000  # entries one assembly may hold before it is refused (about 500 MB held)


def _json(d: dict) -> bytes:
    return json.dumps(d, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def split(entries: dict, part_size: int, whole: int | None = None) -> list[tuple[dict, bytes]]:
    """``entries`` cut into parts whose JSON is at most ``part_size`` bytes each: (entries, their JSON)
    per part, the JSON ready to go on the wire (one part, the whole, when it fits). Cut by count from
    the average entry size (``whole``: the JSON size of everything, when the caller has it), then any
    part still too large is halved: the encoder does the work, no Python call per entry. A part size
    so small that more than MAX_PARTS / 2 parts would be needed is raised to what fits."""
    if whole is None:
        whole = len(_json(entries))
    if whole <= part_size or len(entries) < 2:
        return [(entries, _json(entries))]
    part_size = max(part_size, whole // (MAX_PARTS // 2) + 1)
    keys = list(entries)
    per = max(1, int(len(keys) * part_size * 0.95 / whole))
    todo = [keys[i:i + per] for i in range(0, len(keys), per)]
    out: list[tuple[dict, bytes]] = []
    while todo:
        ks = todo.pop(0)
        d = {k: entries[k] for k in ks}
        data = _json(d)
        if len(ks) > 1 and len(data) > part_size and len(out) + len(todo) + 2 <= MAX_PARTS:
            todo[:0] = [ks[:len(ks) // 2], ks[len(ks) // 2:]]
            continue
        out.append((d, data))
    return out


@dataclass
class Assembly:
    version: int
    parts: int
    count: int
    started: float
    got: dict[int, dict] = field(default_factory=dict)
    entries: int = 0
    controller: str = ""


class Assembler:
    def __init__(self):
        self.open: dict[tuple[str, str], Assembly] = {}

    def take(self, msg: StateMsg, now: float) -> tuple[StateMsg | None, list[str]]:
        """Add the head or one part of a split snapshot: (the whole snapshot when complete, else
        None; messages about assemblies abandoned on the way, each one ``incomplete`` refusal).
        Raises StateRefused("invalid") when the parts of one version disagree (the assembly is
        dropped)."""
        abandoned = []
        a = self.open.get(msg.stream)
        if a is not None and msg.version < a.version:
            return None, []                     # a part of an older snapshot (a stale retained one)
        if a is not None and msg.version > a.version:
            abandoned.append(self._abandon(msg.stream, f"superseded by version {msg.version}"))
            a = None
        if a is None:
            a = self.open[msg.stream] = Assembly(msg.version, msg.parts, msg.count, now)
        a.controller = msg.controller or a.controller
        if (msg.parts, msg.count) != (a.parts, a.count):
            del self.open[msg.stream]
            raise StateRefused("invalid", f"{'/'.join(msg.stream)} version {msg.version}: part {msg.part} says "
                               f"{msg.parts} parts/{msg.count} entries, an earlier one {a.parts}/{a.count}",
                               msg.kind, msg.version)
        if msg.part is not None and msg.part not in a.got:
            a.got[msg.part] = msg.entries
            a.entries += len(msg.entries)
        if a.entries > MAX_ASSEMBLY_ENTRIES or a.count > MAX_ASSEMBLY_ENTRIES:
            del self.open[msg.stream]
            raise StateRefused("too_large", f"{'/'.join(msg.stream)} version {msg.version}: more than "
                               f"{MAX_ASSEMBLY_ENTRIES} entries", msg.kind, msg.version)
        if len(a.got) < a.parts:
            return None, abandoned
        del self.open[msg.stream]
        return self._whole(msg, a), abandoned

    def _whole(self, msg: StateMsg, a: Assembly) -> StateMsg:
        entries: dict = {}
        for i in range(a.parts):
            before = len(entries)
            entries.update(a.got[i])
            if len(entries) != before + len(a.got[i]):
                raise StateRefused("invalid", f"{'/'.join(msg.stream)} version {a.version}: a key is in two "
                                   "parts", msg.kind, a.version)
        if len(entries) != a.count:
            raise StateRefused("invalid", f"{'/'.join(msg.stream)} version {a.version}: the parts hold "
                               f"{len(entries)} entries, the snapshot says {a.count}", msg.kind, a.version)
        return replace(msg, version=a.version, controller=a.controller, entries=entries, parts=0, part=None,
                       count=0)

    def drop_through(self, stream: tuple[str, str], version: int) -> None:
        """The stream reached ``version`` another way (a whole snapshot): older assemblies are moot."""
        a = self.open.get(stream)
        if a is not None and a.version <= version:
            del self.open[stream]

    def sweep(self, now: float, wait: float) -> list[str]:
        """Abandon assemblies started more than ``wait`` seconds ago: one message each."""
        late = [s for s, a in self.open.items() if now - a.started > wait]
        return [self._abandon(s, f"parts still missing after {wait:.0f}s") for s in late]

    def _abandon(self, stream: tuple[str, str], why: str) -> str:
        a = self.open.pop(stream)
        missing = [i for i in range(a.parts) if i not in a.got][:10]
        return (f"{'/'.join(stream)} version {a.version}: {len(a.got)} of {a.parts} parts arrived "
                f"(missing {', '.join(map(str, missing))}{'...' if a.parts - len(a.got) > 10 else ''}): {why}; "
                "the snapshot is not applied")

    def status(self) -> list[dict]:
        return [{"stream": "/".join(s), "version": a.version, "parts": a.parts, "got": len(a.got)}
                for s, a in sorted(self.open.items())]
