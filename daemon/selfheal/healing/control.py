"""Control-socket methods of the self-healing plane: events, queue and incidents."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from selfheal.control.server import Handler
from selfheal.core.events import SELF_HEALING_REQUESTED, Event, new_event
from selfheal.errors import ControlError
from selfheal.healing.store import IncidentSnapshot, IncidentStore, latest
from selfheal.redact import redact

if TYPE_CHECKING:
    from selfheal.healing.plane import HealingPlane


def _now_ms() -> int:
    return int(time.time() * 1000)


class HealingControl:
    """Answers `events.send`, `queue.*` and `incidents.*` for a running plane."""

    def __init__(self, plane: HealingPlane) -> None:
        self.plane = plane

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods of the healing plane."""
        return {
            "events.send": self._events_send,
            "queue.stats": self._queue_stats,
            "queue.dead": self._queue_dead,
            "incidents.list": self._incidents_list,
            "incidents.show": self._incidents_show,
            "incidents.ack": self._incidents_ack,
            "incidents.retry": self._incidents_retry,
        }

    async def _events_send(self, params: dict[str, Any]) -> Any:
        name = _param(params, "name", str)
        data = params.get("data", {})
        if not isinstance(data, dict):
            raise ControlError("invalid_params", "data must be a JSON object")
        key = params.get("idempotencyKey")
        if key is not None and not isinstance(key, str):
            raise ControlError("invalid_params", "idempotencyKey must be a string")
        delay = params.get("delayMs", 0)
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise ControlError("invalid_params", "delayMs must be a non-negative integer")
        try:
            event = new_event(name, data, now_ms=_now_ms(), idempotency_key=key)
        except ValueError as exc:
            raise ControlError("invalid_params", f"invalid event: {exc}") from None
        bus = self.plane.bus()
        if delay:
            await bus.send_after(event, delay)
            if self.plane.pump is not None:
                self.plane.pump.wake()
            return {"id": event.id, "name": name, "scheduledInMs": delay}
        entry = await bus.publish(event, dedupe=key is not None)
        return {"id": event.id, "name": name, "entryId": entry, "deduplicated": entry is None}

    async def _queue_stats(self, params: dict[str, Any]) -> Any:
        stats = await self.plane.bus().stats()
        stats["consumers"] = {
            name: vars(consumer.stats) for name, consumer in self.plane.consumers.items()
        }
        stats["timersFired"] = self.plane.pump.fired if self.plane.pump else 0
        return stats

    async def _queue_dead(self, params: dict[str, Any]) -> Any:
        count = params.get("count", 50)
        if not isinstance(count, int) or not 1 <= count <= 1000:
            raise ControlError("invalid_params", "count must be an integer in 1..1000")
        # A dead letter keeps the entry as the producer wrote it (evidence often quotes a
        # URL or a log line); what leaves the daemon is redacted like everything else.
        return {"deadLetters": redact(await self.plane.bus().dead_letters(count))}

    def _store(self) -> IncidentStore:
        if self.plane.router is None:
            raise ControlError("unavailable", "the router is not running yet")
        return self.plane.router.store

    async def _incidents_list(self, params: dict[str, Any]) -> Any:
        state = params.get("state")
        if state is not None and not isinstance(state, str):
            raise ControlError("invalid_params", "state must be a string")
        snapshots = latest(await self._store().recent(int(params.get("limit", 50))), state)
        return {"incidents": [_incident_row(s) for s in snapshots]}

    async def _snapshot(self, params: dict[str, Any]) -> IncidentSnapshot:
        incident_id = _param(params, "id", str)
        snapshot: IncidentSnapshot = await self._store().load(incident_id)
        if snapshot.incident is None:
            raise ControlError("not_found", f"no incident {incident_id!r}")
        return snapshot

    async def _incidents_show(self, params: dict[str, Any]) -> Any:
        snapshot = await self._snapshot(params)
        assert snapshot.incident is not None
        manual = [
            e
            for e in await self._store().manual_queue(500)
            if e.get("incidentId") == snapshot.incident_id
        ]
        return {
            **_incident_row(snapshot),
            "record": snapshot.incident.to_dict(),
            "lastDecision": snapshot.last_decision.to_dict() if snapshot.last_decision else None,
            "request": snapshot.request,
            "manualQueue": manual,
        }

    async def _incidents_ack(self, params: dict[str, Any]) -> Any:
        snapshot = await self._snapshot(params)
        by = _param(params, "by", str)
        note = params.get("note") or ""
        acked = {"by": by, "atMs": _now_ms(), "note": str(note)[:500]}
        await self.plane.bus().client.hset(
            self.plane.bus().keys.incident(snapshot.incident_id), "acked", json.dumps(acked)
        )
        # Acknowledged, it no longer waits in the operators' queue.
        cleared = await self._store().clear_manual_entries(snapshot.incident_id)
        return {"incidentId": snapshot.incident_id, "acked": acked, "manualEntriesCleared": cleared}

    async def _incidents_retry(self, params: dict[str, Any]) -> Any:
        snapshot = await self._snapshot(params)
        assert snapshot.incident is not None
        if snapshot.request is None:
            raise ControlError("conflict", "the incident has no stored request to retry")
        by = _param(params, "by", str)
        now = _now_ms()
        try:
            reset = snapshot.incident.reset_budget(
                now, by, deadline_ms=now + self.plane.knobs().recovery_window_ms
            )
        except ValueError as exc:
            raise ControlError("conflict", str(exc)) from None
        store = self._store()
        if not await store.update_record(snapshot, reset, {"acked": ""}):
            raise ControlError("conflict", "the incident changed meanwhile; try again")
        request = {**snapshot.request, "attempt": 0}
        event: Event = new_event(SELF_HEALING_REQUESTED, request, now_ms=now)
        await self.plane.bus().publish(event)
        cleared = await store.clear_manual_entries(snapshot.incident_id)
        return {
            "incidentId": snapshot.incident_id,
            "requeued": event.id,
            "resetBy": by,
            "manualEntriesCleared": cleared,
        }


def _param(params: dict[str, Any], name: str, kind: type) -> Any:
    value = params.get(name)
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise ControlError("invalid_params", f"{name} is required ({kind.__name__})")
    return value


def _incident_row(snapshot: IncidentSnapshot) -> dict[str, Any]:
    incident = snapshot.incident
    assert incident is not None
    return {
        "incidentId": incident.incident_id,
        "domain": incident.domain,
        "targetComponent": incident.target_component,
        "state": str(incident.state),
        "retriesUsed": incident.retries_used,
        "pauses": incident.pauses,
        "operatorResets": incident.operator_resets,
        "lastClass": incident.last_class,
        "lastReason": incident.last_reason,
        "firstSeenMs": incident.first_seen_ms,
        "updatedMs": incident.updated_ms,
        "deadlineMs": incident.deadline_ms,
        "acked": snapshot.acked or None,
    }
