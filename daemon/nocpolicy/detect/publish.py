"""Publish the RPZ files for the resolver and tell it to reload (the I/O edge of rpz.py).

Files in the RPZ directory: ``mandatory.rpz``, ``security.rpz`` and, with
``views: tags``, ``unbound-acl.conf`` (an ``include:`` for unbound.conf). A file
is rewritten only when its content (serial aside) changes; then the resolver is
told: ``reload_config`` when the ACL include changed (unbound re-reads everything),
else ``reload_zone`` once per changed zone with ``{zone}`` replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from ..clock import wall
from ..errors import EnforcementError
from ..policy.detect import RpzSettings
from . import rpz

log = logging.getLogger(__name__)


def rpz_directory(settings: RpzSettings, state_dir: str) -> Path:
    d = Path(settings.directory)
    return d if d.is_absolute() else Path(state_dir) / d


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)        # the resolver (another user) reads it; names only, no secrets
    os.replace(tmp, path)


def _current(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


class RpzPublisher:
    def __init__(self, settings: RpzSettings, state_dir: str):
        self.settings = settings
        self.directory = rpz_directory(settings, state_dir)
        self.serial = 0
        self.writes = 0
        self.reloads = 0
        self.failures = 0
        self.last_error = ""

    def render(self, blocks, customers, optouts: set[str]) -> dict[str, tuple[str | None, str]]:
        """file name -> (zone name or None, text)."""
        s = self.settings
        self.serial = max(self.serial + 1, int(wall()))
        zones = rpz.zone_names(s.origin)
        security = rpz.security_published(s.views, customers, optouts)
        out = {}
        for cls in ("mandatory", "security"):
            chosen = [b for b in blocks if b.cls == cls and (cls == "mandatory" or security)]
            out[f"{cls}.rpz"] = (zones[cls], rpz.zone_text(zones[cls], self.serial, s.ttl, chosen))
        if s.views == "tags":
            out["unbound-acl.conf"] = (None, rpz.unbound_acl(customers, optouts))
        return out

    def write_changed(self, files: dict[str, tuple[str | None, str]]) -> tuple[list[str], bool]:
        """Write what changed (blocking: call in a thread); (changed zones, acl changed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        zones, acl = [], False
        for fname, (zone, text) in files.items():
            path = self.directory / fname
            old = _current(path)
            same = old is not None and (rpz.zone_body(old) == rpz.zone_body(text) if zone else old == text)
            if same:
                continue
            _write(path, text)
            self.writes += 1
            if zone is None:
                acl = True
            else:
                zones.append(zone.rstrip("."))
        return zones, acl

    async def publish(self, blocks, customers, optouts: set[str]) -> dict:
        files = self.render(blocks, customers, optouts)
        try:
            zones, acl = await asyncio.to_thread(self.write_changed, files)
        except OSError as exc:
            self.failures += 1
            self.last_error = f"cannot write RPZ files in {self.directory}: {exc.strerror or exc}"
            raise EnforcementError(self.last_error) from exc
        cmds = []
        if acl:
            cmds.append(list(self.settings.reload_config))
        elif zones:
            cmds.extend([a.replace("{zone}", z) for a in self.settings.reload_zone] for z in zones)
        for argv in cmds:
            await self._run(argv)
        return {"zones": zones, "acl": acl, "commands": len(cmds)}

    async def _run(self, argv: list[str], limit: float = 15.0) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), limit)
        except OSError as exc:
            self.failures += 1
            self.last_error = f"cannot run {argv[0]}: {exc.strerror or exc}"
            raise EnforcementError(self.last_error) from exc
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self.failures += 1
            self.last_error = f"{' '.join(argv)} did not finish within {limit:.0f}s"
            raise EnforcementError(self.last_error) from None
        if proc.returncode != 0:
            self.failures += 1
            self.last_error = (f"{' '.join(argv)} failed ({proc.returncode}): "
                               f"{out.decode(errors='replace').strip()[:300]}")
            raise EnforcementError(self.last_error)
        self.reloads += 1
        self.last_error = ""
