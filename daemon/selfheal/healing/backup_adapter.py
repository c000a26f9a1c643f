"""`system/backup.failure.router`: the backup domain's adapter to the one router.

A failed backup becomes a self-healing request for the incident `backup:<target>`
(one loop and one budget per target: the router owns the counting, defect 7);
a completed backup closes that incident as remediated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selfheal.bus.consumer import PoisonEvent
from selfheal.bus.streams import Bus
from selfheal.config.schema import RouterSettings
from selfheal.core.artifacts import validate_target
from selfheal.core.events import (
    BACKUP_RETRY_REQUESTED,
    SELF_HEALING_REQUESTED,
    Event,
    InvalidEvent,
    new_event,
)
from selfheal.healing.router import Router


def backup_incident_id(target: str) -> str:
    """The one incident per backup target."""
    return f"backup:{target}"


def _target(event: Event) -> str:
    target = event.data.get("target")
    if not isinstance(target, str):
        raise PoisonEvent(f"{event.name}: data.target must be a string")
    try:
        return validate_target(target)
    except ValueError as exc:
        raise PoisonEvent(f"{event.name}: data.target: {exc}") from None


def healing_request(event: Event, router: RouterSettings) -> dict[str, Any]:
    """The self-healing request for a `system/backup.failed` event."""
    data = event.data
    target = _target(event)
    attempt = data.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise PoisonEvent(f"{event.name}: data.attempt must be a non-negative integer")
    evidence = data.get("evidence") or []
    if not isinstance(evidence, list):
        raise PoisonEvent(f"{event.name}: data.evidence must be a list")
    error = str(data.get("error") or "backup failed")
    return {
        "sourceFunction": f"system/backup.{target}",
        "targetComponent": target,
        "problemSummary": f"{target} backup failed: {error}"[:2000],
        "attempt": attempt,
        "retryPolicy": {
            "maxRetries": router.max_retries,
            "sleepMinMs": router.sleep_min_ms,
            "sleepMaxMs": router.sleep_max_ms,
            "sleepStepMs": router.sleep_step_ms,
        },
        "evidence": evidence,
        "playbook": {
            "actions": ["retry", "switch-transport", "notify"],
            "runbook": "selfheal incidents show " + backup_incident_id(target),
        },
        "context": {k: data[k] for k in ("runId", "transportMode", "trigger") if k in data},
        "incidentId": backup_incident_id(target),
        "domain": "backup",
        "routeTo": {"event": BACKUP_RETRY_REQUESTED, "data": {"target": target}},
    }


class BackupFailureAdapter:
    """Handlers for backup.failed and backup.completed."""

    def __init__(self, bus: Bus, router: Router, settings: Callable[[], RouterSettings]) -> None:
        self.bus = bus
        self.router = router
        self._settings = settings

    async def on_failed(self, event: Event) -> None:
        """Turn a failure into the incident's next self-healing request."""
        request = healing_request(event, self._settings())
        try:
            healing = new_event(
                SELF_HEALING_REQUESTED,
                request,
                now_ms=event.ts,
                idempotency_key=f"{event.id}/healing",
                traceparent=event.traceparent,
            )
        except InvalidEvent as exc:
            # Past the event data limits: no delivery would do better.
            raise PoisonEvent(
                f"{event.name}: cannot publish its self-healing request: {exc}"
            ) from None
        await self.bus.publish(healing, dedupe=True)

    async def on_completed(self, event: Event) -> None:
        """A verified backup closes the target's incident."""
        await self.router.remediate(backup_incident_id(_target(event)), cause=event)
