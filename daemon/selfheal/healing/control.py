"""Control-socket methods of the self-healing plane: events, queue and incidents."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from pydantic import ValidationError

from selfheal.bus.connection import REDIS_UNREACHABLE
from selfheal.bus.consumer import StreamConsumer
from selfheal.bus.streams import Bus, NotReplicated, Replication, as_text
from selfheal.bus.timers import TimerPump
from selfheal.control.params import MAX_ROWS, Params
from selfheal.control.protocol import INVALID_PARAMS
from selfheal.control.server import Handler
from selfheal.core.contracts import (
    INCIDENT_ID_MAX_LENGTH,
    INCIDENT_ID_PATTERN,
    TEXT_LIMIT,
    SelfHealingRequest,
)
from selfheal.core.events import (
    EVENT_NAME_MAX_LENGTH,
    EVENT_NAME_PATTERN,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    SELF_HEALING_REQUESTED,
    InvalidEvent,
    new_event,
)
from selfheal.core.incident import IncidentState
from selfheal.core.limits import SLEEP_LIMIT_MS
from selfheal.core.policy import Knobs, route_data
from selfheal.errors import ControlError
from selfheal.healing.domains import Domains
from selfheal.healing.router import Router
from selfheal.healing.store import IncidentSnapshot, IncidentStore, latest
from selfheal.redact import redact


class PlaneView(Protocol):
    """What the control methods read of the running healing plane."""

    @property
    def router(self) -> Router | None:
        """The running router, once it has started."""
        ...

    @property
    def pump(self) -> TimerPump | None:
        """The running timer pump, once it has started."""
        ...

    @property
    def consumers(self) -> Mapping[str, StreamConsumer]:
        """The plane's consumers by name (for their counters)."""
        ...

    def bus(self) -> Bus:
        """The bus over the current Redis client."""
        ...

    def knobs(self) -> Knobs:
        """Router knobs from the live config."""
        ...

    def replication(self) -> Replication | None:
        """The replicas an event must reach before `events.send` acknowledges it."""
        ...

    @property
    def domains(self) -> Domains:
        """The registered domains (their retry events)."""
        ...


# An operator's note on an acknowledgement.
ACK_NOTE_LIMIT: Final = 500
_STATES: Final = tuple(state.value for state in IncidentState)


def _now_ms() -> int:
    return int(time.time() * 1000)


class HealingControl:
    """Answers `events.send`, `queue.*` and `incidents.*` for a running plane."""

    def __init__(self, plane: PlaneView) -> None:
        self.plane = plane

    def handlers(self) -> dict[str, Handler]:
        """Control-socket methods of the healing plane."""
        return {
            "events.send": self._events_send,
            "queue.stats": self._queue_stats,
            "queue.dead": self._queue_dead,
            "queue.requeue": self._queue_requeue,
            "incidents.list": self._incidents_list,
            "incidents.show": self._incidents_show,
            "incidents.ack": self._incidents_ack,
            "incidents.retry": self._incidents_retry,
        }

    async def _events_send(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        name = read.text(
            "name",
            max_length=EVENT_NAME_MAX_LENGTH,
            pattern=EVENT_NAME_PATTERN,
            meaning="an event name (domain/name in lower case)",
        )
        data = read.mapping("data")
        key = read.optional_text(
            "idempotencyKey", min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH
        )
        # A delayed event waits as a timer; the router holds none longer than this.
        delay = read.integer("delayMs", low=0, high=SLEEP_LIMIT_MS, default=0)
        force = read.flag("force", default=False)
        try:
            event = new_event(name, data, now_ms=_now_ms(), idempotency_key=key)
        except InvalidEvent as exc:
            raise ControlError(INVALID_PARAMS, f"invalid event: {exc}") from None
        bus = self.plane.bus()
        replication = self.plane.replication()
        # An immediate publish is deduplicated by its idempotency key (a delayed one is not).
        again = "send it again" + (
            "" if delay else " with the same idempotencyKey" if key else " with an idempotencyKey"
        )
        try:
            if not force and not await bus.groups_of(name):
                # A typo would otherwise wait in a stream nobody reads, looking sent.
                raise ControlError(
                    "not_consumed",
                    f"nothing consumes {name} (see `selfheal events list`); "
                    "--force sends it anyway",
                )
            if delay:
                await bus.send_after(event, delay, replication=replication)
                if self.plane.pump is not None:
                    self.plane.pump.wake()
                return {"id": event.id, "name": name, "scheduledInMs": delay}
            entry = await bus.publish(event, dedupe=key is not None, replication=replication)
        except REDIS_UNREACHABLE as exc:
            # Redis went away mid-send (a failover; on a cluster, a slot's master down or
            # every node the client knows out of reach): the event may or may not be in.
            raise ControlError(
                "unavailable",
                f"event {event.id} not acknowledged: {exc}; {again}",
            ) from None
        except NotReplicated as exc:
            # The master has the event, but a failover now could lose it.
            raise ControlError(
                "not_replicated",
                f"event {event.id} not acknowledged: {exc} (selfheal.redis.ackReplicas); {again}",
            ) from None
        return {"id": event.id, "name": name, "entryId": entry, "deduplicated": entry is None}

    async def _queue_stats(self, params: dict[str, Any]) -> Any:
        stats = await self.plane.bus().stats()
        stats["consumers"] = {
            name: vars(consumer.stats) for name, consumer in self.plane.consumers.items()
        }
        stats["timersFired"] = self.plane.pump.fired if self.plane.pump else 0
        return stats

    async def _queue_dead(self, params: dict[str, Any]) -> Any:
        count = Params(params).integer("count", low=1, high=MAX_ROWS, default=50)
        # A dead letter keeps the entry as the producer wrote it (evidence often quotes a
        # URL or a log line); what leaves the daemon is redacted like everything else.
        return {"deadLetters": redact(await self.plane.bus().dead_letters(count))}

    async def _queue_requeue(self, params: dict[str, Any]) -> Any:
        # ASCII digits ([0-9], not \d, which takes any script's): what Redis reads.
        dead_id = Params(params).text(
            "id", max_length=41, pattern=r"[0-9]{1,20}-[0-9]{1,20}", meaning="a dead letter id"
        )
        if any(int(part) >= 1 << 64 for part in dead_id.split("-")):
            # Past a stream id's 64-bit parts: Redis would refuse it as a command error.
            raise ControlError("not_found", f"no dead letter {dead_id}")
        try:
            return await self.plane.bus().requeue(dead_id)
        except LookupError as exc:
            raise ControlError("not_found", str(exc)) from None
        except ValueError as exc:
            raise ControlError(INVALID_PARAMS, str(exc)) from None

    def _store(self) -> IncidentStore:
        if self.plane.router is None:
            raise ControlError("unavailable", "the router is not running yet")
        return self.plane.router.store

    async def _incidents_list(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        state = read.optional_choice("state", _STATES)
        limit = read.integer("limit", low=1, high=MAX_ROWS, default=50)
        snapshots = latest(await self._store().recent(limit), state)
        return {"incidents": [_incident_row(s) for s in snapshots]}

    async def _snapshot(self, params: dict[str, Any]) -> IncidentSnapshot:
        incident_id = Params(params).text(
            "id",
            max_length=INCIDENT_ID_MAX_LENGTH,
            pattern=INCIDENT_ID_PATTERN,
            meaning="an incident id (letters, digits, '_', '.', ':' or '-')",
        )
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
        bus = self.plane.bus()
        raw_notices = await bus.client.lrange(bus.keys.notices(snapshot.incident_id), 0, -1)
        notices = [json.loads(as_text(n)) for n in raw_notices]
        record = snapshot.incident.to_dict()
        return {
            **_incident_row(snapshot),
            "record": record,
            "lastDecision": snapshot.last_decision.to_dict() if snapshot.last_decision else None,
            "request": snapshot.request,
            "manualQueue": manual,
            "notices": notices,
            "timeline": timeline(record["history"], notices, snapshot.acked or None, manual),
        }

    async def _incidents_ack(self, params: dict[str, Any]) -> Any:
        read = Params(params)
        by = read.text("by", max_length=TEXT_LIMIT)
        note = read.optional_text("note", max_length=ACK_NOTE_LIMIT) or ""
        snapshot = await self._snapshot(params)
        acked = {"by": by, "atMs": _now_ms(), "note": note}
        await self.plane.bus().client.hset(
            self.plane.bus().keys.incident(snapshot.incident_id), "acked", json.dumps(acked)
        )
        # Acknowledged, it no longer waits in the operators' queue.
        cleared = await self._store().clear_manual_entries(snapshot.incident_id)
        return {"incidentId": snapshot.incident_id, "acked": acked, "manualEntriesCleared": cleared}

    async def _incidents_retry(self, params: dict[str, Any]) -> Any:
        """A fresh budget, then the failed work again: the domain's retry event at once
        (the backup runs now), or with `reroute` the last request back to the router."""
        read = Params(params)
        by = read.text("by", max_length=TEXT_LIMIT)
        reroute = read.flag("reroute", default=False)
        snapshot = await self._snapshot(params)
        incident = snapshot.incident
        assert incident is not None
        if snapshot.request is None:
            raise ControlError("conflict", "the incident has no stored request to retry")
        now = _now_ms()
        route = self.plane.domains.routes().get(incident.domain)
        if not reroute and route is None:
            raise ControlError(
                "conflict",
                f"domain {incident.domain!r} has no retry event to run now; "
                "--reroute sends the request to the router again",
            )
        # Built before the budget is reset, so work that cannot be re-sent resets nothing.
        try:
            if reroute:
                event = new_event(
                    SELF_HEALING_REQUESTED, {**snapshot.request, "attempt": 0}, now_ms=now
                )
            else:
                request = SelfHealingRequest.model_validate(snapshot.request)
                assert route is not None
                fresh = incident.reset_budget(now, by)  # attempt 1 of the new budget
                event = new_event(route, route_data(request, fresh), now_ms=now)
        except (InvalidEvent, ValidationError, ValueError) as exc:
            raise ControlError("conflict", f"the stored request cannot be re-sent: {exc}") from None
        try:
            reset = incident.reset_budget(
                now,
                by,
                deadline_ms=now + self.plane.knobs().recovery_window_ms,
                rerun=None if reroute else f"{event.name} {event.id}",
            )
        except ValueError as exc:
            raise ControlError("conflict", str(exc)) from None
        store = self._store()
        if not await store.update_record(snapshot, reset, {"acked": ""}):
            raise ControlError("conflict", "the incident changed meanwhile; try again")
        await self.plane.bus().publish(event)
        cleared = await store.clear_manual_entries(snapshot.incident_id)
        return {
            "incidentId": snapshot.incident_id,
            "mode": "reroute" if reroute else "rerun",
            "event": event.name,
            "eventId": event.id,
            "resetBy": by,
            "manualEntriesCleared": cleared,
        }


def timeline(
    history: list[dict[str, Any]],
    notices: list[dict[str, Any]],
    acked: dict[str, Any] | None,
    manual: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """What happened to an incident, oldest first, one entry per step: each decision
    (its class, rule, delay and the problem it answered), budget resets, the
    remediation, each notification sent (and to whom), the manual-queue entry and
    the acknowledgement."""
    entries: list[dict[str, Any]] = []

    def add(at_ms: Any, event: str, detail: str) -> None:
        entries.append({"atMs": int(at_ms or 0), "event": event, "detail": detail})

    for step in history:
        parts = []
        if "failureClass" in step:
            parts.append(f"{step['failureClass']}, rule {step.get('rule', '?')}")
        if step.get("delayMs"):
            parts.append(f"in {step['delayMs']} ms")
        for key, label in (
            ("reason", ""),
            ("problem", "problem: "),
            ("by", "by "),
            ("rerun", "ran again: "),
            ("traceId", "trace "),
        ):
            if step.get(key):
                parts.append(f"{label}{step[key]}")
        add(step.get("atMs"), str(step.get("event", "?")), "; ".join(parts))
    for notice in notices:
        sent = ", ".join(f"{name} {result}" for name, result in notice.get("results", {}).items())
        add(notice.get("atMs"), f"notified ({notice.get('kind')})", sent)
    for entry in manual:
        add(entry.get("atMs"), "manual queue", str(entry.get("reason", "")))
    if acked:
        note = f": {acked['note']}" if acked.get("note") else ""
        add(acked.get("atMs"), "acknowledged", f"by {acked.get('by')}{note}")
    return sorted(entries, key=lambda e: int(e["atMs"]))


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
