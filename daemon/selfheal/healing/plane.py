"""The self-healing plane as the daemon runs it: bus services and control methods.

It builds the timer pump, the router's consumer and the notification sink on top
of the daemon's Redis link, and answers `events.send`, `queue.stats` and
`incidents.*` on the control socket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis.asyncio as aioredis

from selfheal.bus.consumer import ConsumerOptions, StreamConsumer
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.bus.timers import TimerPump
from selfheal.config import Settings
from selfheal.control.server import Handler
from selfheal.core.events import (
    BACKUP_COMPLETED,
    BACKUP_FAILED,
    BACKUP_FAILURE_ROUTER,
    SELF_HEALING_REQUESTED,
    Event,
    new_event,
)
from selfheal.core.policy import Knobs
from selfheal.errors import ControlError
from selfheal.healing.advice import LlmAdviser
from selfheal.healing.advisor import Advisor
from selfheal.healing.backup_adapter import BackupFailureAdapter
from selfheal.healing.notify_sink import NotificationSink
from selfheal.healing.router import NOTIFY_REQUESTED, ROUTER_GROUP, Router
from selfheal.healing.store import IncidentSnapshot, latest
from selfheal.supervisor import Service, ServiceSpec
from selfheal.telemetry import Telemetry

NOTIFIER_GROUP = "system/self.healing.notifier"
HOUR_MS = 3_600_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class HealingPlane:
    """Owns the healing services' construction and their control methods."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        client: Callable[[], aioredis.Redis],
        telemetry: Telemetry,
        consumer_name: str,
        stopping: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._client = client
        self.telemetry = telemetry
        self.consumer_name = consumer_name
        self._stopping = stopping
        self._bus: Bus | None = None
        self.router: Router | None = None
        self.consumers: dict[str, StreamConsumer] = {}
        self.pump: TimerPump | None = None
        self.advisor: Advisor | None = None
        self._http: httpx.AsyncClient | None = None

    def bus(self) -> Bus:
        """A bus over the current Redis client (rebuilt when the link reconnects anew)."""
        client = self._client()
        settings = self._settings()
        keys = Keys(settings.redis.namespace)
        maxlen = settings.bus.stream_max_len
        if (
            self._bus is None
            or self._bus.client is not client
            or self._bus.keys != keys
            or self._bus.maxlen != maxlen
        ):
            self._bus = Bus(client, keys, maxlen=maxlen)
        return self._bus

    def consumer_options(self, **overrides: Any) -> ConsumerOptions:
        """Delivery options from the config's bus section, with per-consumer overrides."""
        bus = self._settings().bus
        base: dict[str, Any] = {
            "reclaim_idle_ms": int(bus.reclaim_idle_seconds * 1000),
            "max_deliveries": bus.max_deliveries,
        }
        return ConsumerOptions(**{**base, **overrides})

    def knobs(self) -> Knobs:
        """Router knobs from the live config."""
        hours = self._settings().transport.recovery_window_hours
        return Knobs(recovery_window_ms=int(hours * HOUR_MS))

    # -- services ---------------------------------------------------------------------

    def specs(self, depends_on: Callable[[], object]) -> list[ServiceSpec]:
        """Services to run after the Redis link, restarted whenever the link is."""
        return [
            ServiceSpec(name="timers", factory=self._make_pump, depends_on=depends_on),
            ServiceSpec(
                name="router", factory=self._make_router, depends_on=depends_on, drains=True
            ),
            ServiceSpec(
                name="notifier", factory=self._make_notifier, depends_on=depends_on, drains=True
            ),
            ServiceSpec(
                name="backup-failures",
                factory=lambda: self._make_adapter(BACKUP_FAILED),
                depends_on=depends_on,
                drains=True,
            ),
            ServiceSpec(
                name="backup-completions",
                factory=lambda: self._make_adapter(BACKUP_COMPLETED),
                depends_on=depends_on,
                drains=True,
            ),
        ]

    def _make_adapter(self, event_name: str) -> Service:
        assert self.router is not None, "the router starts before the adapter"
        bus = self.bus()
        adapter = BackupFailureAdapter(bus, self.router, lambda: self._settings().router)
        handler = adapter.on_failed if event_name == BACKUP_FAILED else adapter.on_completed
        consumer = StreamConsumer(
            bus,
            event_name,
            BACKUP_FAILURE_ROUTER,
            self.consumer_name,
            handler,
            options=self.consumer_options(),
            stopping=self._stopping,
        )
        consumer.name = f"adapter:{event_name}"
        self.consumers[consumer.name] = consumer
        return consumer

    def _make_pump(self) -> Service:
        self.pump = TimerPump(self.bus())
        return self.pump

    def _make_router(self) -> Service:
        bus = self.bus()
        self.router = Router(bus, self.telemetry, knobs=self.knobs, adviser=self._adviser())
        consumer = StreamConsumer(
            bus,
            SELF_HEALING_REQUESTED,
            ROUTER_GROUP,
            self.consumer_name,
            self.router.handle,
            options=self.consumer_options(concurrency=16),
            stopping=self._stopping,
            # Fresh entries are decided and committed a batch at a time; anything the
            # batch cannot settle goes through `handle` one by one.
            batch_handler=self.router.handle_batch,
        )
        consumer.name = "router"
        self.consumers["router"] = consumer
        return consumer

    def _adviser(self) -> LlmAdviser | None:
        settings = self._settings()
        if not settings.advisor.enabled:
            return None
        model, fallback = settings.advisor_models
        if self._http is None:
            self._http = httpx.AsyncClient()
        self.advisor = Advisor(
            settings.advisor, model=model, fallback_model=fallback, client=self._http
        )
        return LlmAdviser(self.advisor)

    def _make_notifier(self) -> Service:
        bus = self.bus()
        sink = NotificationSink(bus, lambda: self._settings().notifiers)
        consumer = StreamConsumer(
            bus,
            NOTIFY_REQUESTED,
            NOTIFIER_GROUP,
            self.consumer_name,
            sink.handle,
            options=self.consumer_options(),
            stopping=self._stopping,
        )
        consumer.name = "notifier"
        self.consumers["notifier"] = consumer
        return consumer

    # -- control methods ----------------------------------------------------------------

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
        bus = self.bus()
        if delay:
            await bus.send_after(event, delay)
            if self.pump is not None:
                self.pump.wake()
            return {"id": event.id, "name": name, "scheduledInMs": delay}
        entry = await bus.publish(event, dedupe=key is not None)
        return {"id": event.id, "name": name, "entryId": entry, "deduplicated": entry is None}

    async def _queue_stats(self, params: dict[str, Any]) -> Any:
        stats = await self.bus().stats()
        stats["consumers"] = {
            name: vars(consumer.stats) for name, consumer in self.consumers.items()
        }
        stats["timersFired"] = self.pump.fired if self.pump else 0
        return stats

    async def _queue_dead(self, params: dict[str, Any]) -> Any:
        count = params.get("count", 50)
        if not isinstance(count, int) or not 1 <= count <= 1000:
            raise ControlError("invalid_params", "count must be an integer in 1..1000")
        return {"deadLetters": await self.bus().dead_letters(count)}

    def _store(self) -> Any:
        if self.router is None:
            raise ControlError("unavailable", "the router is not running yet")
        return self.router.store

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
        await self.bus().client.hset(
            self.bus().keys.incident(snapshot.incident_id), "acked", json.dumps(acked)
        )
        return {"incidentId": snapshot.incident_id, "acked": acked}

    async def _incidents_retry(self, params: dict[str, Any]) -> Any:
        snapshot = await self._snapshot(params)
        assert snapshot.incident is not None
        if snapshot.request is None:
            raise ControlError("conflict", "the incident has no stored request to retry")
        by = _param(params, "by", str)
        now = _now_ms()
        try:
            reset = snapshot.incident.reset_budget(
                now, by, deadline_ms=now + self.knobs().recovery_window_ms
            )
        except ValueError as exc:
            raise ControlError("conflict", str(exc)) from None
        store = self._store()
        if not await store.update_record(snapshot, reset, {"acked": ""}):
            raise ControlError("conflict", "the incident changed meanwhile; try again")
        request = {**snapshot.request, "attempt": 0}
        event: Event = new_event(SELF_HEALING_REQUESTED, request, now_ms=now)
        await self.bus().publish(event)
        return {"incidentId": snapshot.incident_id, "requeued": event.id, "resetBy": by}


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
