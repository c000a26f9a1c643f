"""The notification sink: announces escalations (and all-clears) without blocking the router.

The router only publishes a `system/self.healing.notify` event, latched to one per
incident; this consumer delivers it to every configured notifier. Each notifier's
success is remembered in Redis, so a redelivery after a partial failure only
retries the notifiers that have not delivered yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from selfheal.bus.keys import DONE_TTL_S
from selfheal.bus.streams import Bus
from selfheal.config.schema_healing import NotifiersSettings
from selfheal.core.events import Event
from selfheal.healing.notifiers import Notification, build_notifiers, deliver

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

    def __init__(self, bus: Bus, settings: Callable[[], NotifiersSettings]) -> None:
        self.bus = bus
        self._settings = settings
        self.sent = 0

    async def handle(self, event: Event) -> None:
        """Deliver to every configured notifier not yet delivered for this event."""
        notifiers = build_notifiers(self._settings())
        if not notifiers:
            log.info("escalation %s: no notifier configured", event.data.get("kind"))
            return
        done = {
            n.name
            for n in notifiers
            if await self.bus.client.exists(self.bus.keys.delivered(event.id, n.name))
        }
        notification = notification_from(event)
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
            report = await deliver(notification, notifiers, client, skip=done)
        for name in report.delivered:
            await self.bus.client.set(
                self.bus.keys.delivered(event.id, name), int(time.time()), ex=DONE_TTL_S
            )
        self.sent += len(report.delivered)
        if not report.all_ok:
            failed = {k: v for k, v in report.results.items() if v != "ok"}
            raise NotificationFailed(f"not delivered: {failed}")
