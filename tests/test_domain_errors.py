"""Components raise domain errors; the command registry alone turns them into 400/404/409."""

from __future__ import annotations

import pytest

from nocpolicy.control.commands import Command, CommandRegistry
from nocpolicy.errors import CommandError, Conflict, Invalid, NocpolicyError, NotFound


@pytest.mark.parametrize("error, status", [
    (Invalid("end must be after start", field="end"), 400),
    (NotFound("no maintenance window 'mw-x'", field="id"), 404),
    (Conflict("window mw-x is completed; nothing to update"), 409),
    (NocpolicyError("the store is locked"), 409),
])
async def test_dispatch_maps_a_components_refusal_to_a_status_with_its_field(error, status):
    async def handler(args, inv):
        raise error
    reg = CommandRegistry()
    reg.register(Command("thing.do", handler, "raise"))
    with pytest.raises(CommandError) as e:
        await reg.dispatch("thing.do", {}, actor="test", source="test")
    assert e.value.status == status and str(e.value) == str(error)
    assert e.value.field == getattr(error, "field", None)


def test_domain_code_names_no_http_status():
    """maintenance/service.py and the components' handlers raise domain errors, not CommandError(status=)."""
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "daemon" / "nocpolicy"
    for path in ("maintenance/service.py", "maintenance/commands.py", "dns/component.py", "qos/component.py"):
        text = (root / path).read_text()
        assert "status=" not in text.replace("status=status", ""), path
