"""The notification sink: announces escalations (and all-clears) without blocking the router.

The router only publishes a `system/self.healing.notify` event, latched to one per
incident; this consumer delivers it to every configured notifier. Each notifier's
success is remembered in Redis, so a redelivery after a partial failure only
retries the notifiers that have not delivered yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from selfheal.bus.keys import DONE_TTL_S
from selfheal.bus.streams import Bus, as_text
from selfheal.config.schema_healing import NotifiersSettings
from selfheal.core.events import Event
from selfheal.healing.notifiers import Notification, build_notifiers, deliver
from selfheal.telemetry import Telemetry, context_from_traceparent

# Notifications an incident's timeline keeps.
NOTICES_KEPT = 20

log = logging.getLogger("selfheal.notify")

HTTP_TIMEOUT_S = 15.0


class NotificationFailed(Exception):
    """Some notifier did not deliver; the event stays pending and is retried later."""


def notification_from(event: Event) -> Notification:
    """Build the human announcement from a notify event's data."""
    data: dict[str, Any] = event.data
    incident = data.get("incident") or {}
    decision = data.get("decision") or {}
    kind = data.get("kind", "escalated")
    target = str(incident.get("targetComponent", "?"))
    incident_id = str(incident.get("incidentId", "?"))
    if kind == "all_clear":
        title = f"selfheal: {target} recovered"
        message = f"Incident {incident_id} is remediated."
    else:
        title = f"selfheal: {target} needs attention"
        message = (
            f"{data.get('problemSummary', 'failure')}\n"
            f"Incident {incident_id} escalated: {decision.get('reason', 'unknown reason')}.\n"
            f"Retries used: {incident.get('retriesUsed', 0)}. "
            f"See: selfheal incidents show {incident_id}"
        )
    return Notification(
        kind="all_clear" if kind == "all_clear" else "escalated",
        incident_id=incident_id,
        domain=str(incident.get("domain", "?")),
        target_component=target,
        title=title,
        message=message,
        failure_class=decision.get("failureClass"),
        reason=decision.get("reason"),
        attempt=int(incident.get("retriesUsed", 0)),
        at_ms=int(decision.get("decidedAtMs", event.ts)),
    )


class NotificationSink:
    """Handler for notify events."""

    def __init__(
        self, bus: Bus, settings: Callable[[], NotifiersSettings], telemetry: Telemetry
    ) -> None:
        self.bus = bus
        self._settings = settings
        self.telemetry = telemetry
        self.sent = 0
        self.quieted = 0

    async def handle(self, event: Event) -> None:
        """Deliver to every configured notifier not yet delivered for this event."""
        notification = notification_from(event)
        # The notify event carries the escalating decision's span: the same trace.
        with self.telemetry.decision_span(
            "selfheal.notify",
            {"kind": notification.kind, "incident_id": notification.incident_id},
            context=context_from_traceparent(event.traceparent),
        ) as span:
            settings = self._settings()
            notifiers = build_notifiers(settings)
            if not notifiers:
                log.info("escalation %s: no notifier configured", event.data.get("kind"))
                span.set_attribute("selfheal.outcome", "no notifier")
                return
            if await self._in_quiet_window(event, settings.quiet_window_minutes):
                span.set_attribute("selfheal.outcome", "quiet window")
                return
            done = {
                n.name
                for n in notifiers
                if await self.bus.client.exists(self.bus.keys.delivered(event.id, n.name))
            }
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
                report = await deliver(notification, notifiers, client, skip=done)
            # "ok" or the redacted error, per notifier tried now.
            span.set_attributes({f"selfheal.notifier.{k}": v for k, v in report.results.items()})
            for name in report.delivered:
                await self.bus.client.set(
                    self.bus.keys.delivered(event.id, name), int(time.time()), ex=DONE_TTL_S
                )
            self.sent += len(report.delivered)
            await self._note(notification.incident_id, notification.kind, report.results)
            if not report.all_ok:
                failed = {k: v for k, v in report.results.items() if v != "ok"}
                raise NotificationFailed(f"not delivered: {failed}")

    async def _note(self, incident_id: str, kind: str, results: dict[str, str]) -> None:
        """Add what was sent to the incident's timeline (newest first, the last 20)."""
        if not incident_id or not results:
            return
        note = json.dumps({"atMs": int(time.time() * 1000), "kind": kind, "results": results})
        key = self.bus.keys.notices(incident_id)
        pipe = self.bus.client.pipeline(transaction=True)
        pipe.lpush(key, note)
        pipe.ltrim(key, 0, NOTICES_KEPT - 1)
        pipe.expire(key, DONE_TTL_S)
        await pipe.execute()

    async def _in_quiet_window(self, event: Event, minutes: int) -> bool:
        """True when another escalation notice of this incident went out less than
        `minutes` ago (an incident given a fresh budget that escalates again at once
        does not page twice). A redelivery of the same event is not held back, and an
        all-clear always goes out."""
        incident_id = str((event.data.get("incident") or {}).get("incidentId", ""))
        if not minutes or event.data.get("kind") == "all_clear" or not incident_id:
            return False
        latch = self.bus.keys.notified(incident_id)
        if await self.bus.client.set(latch, event.id, nx=True, px=minutes * 60_000):
            return False
        holder = await self.bus.client.get(latch)
        if holder is not None and as_text(holder) == event.id:
            return False
        self.quieted += 1
        log.info(
            "escalation of %s not announced again: one was sent within quietWindowMinutes (%d)",
            incident_id,
            minutes,
        )
        return True
