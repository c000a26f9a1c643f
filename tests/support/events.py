"""Stream entries to feed Event.from_wire: a valid one, with fields changed or dropped."""

from __future__ import annotations

from typing import Any

from selfheal.core.events import BACKUP_FAILED, new_event


def wire_entry(**changes: Any) -> dict[str, Any]:
    """The wire fields of a valid event; a change of None drops that field."""
    wire: dict[str, Any] = new_event(BACKUP_FAILED, {"a": 1}, now_ms=9).to_wire()
    for key, value in changes.items():
        if value is None:
            del wire[key]
        else:
            wire[key] = value
    return wire
