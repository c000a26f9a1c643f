"""The notification sink on a real Redis and a real local webhook: the quiet window."""

from __future__ import annotations

import time
from typing import Any

import pytest

from selfheal.bus.streams import Bus
from selfheal.config.schema_healing import NotifiersSettings
from selfheal.core.events import Event, new_event
from selfheal.healing.notify_sink import NotificationFailed, NotificationSink
from tests.support.http import Posted, Reply, played_service

pytestmark = pytest.mark.anyio


def notice(incident_id: str, kind: str = "escalated") -> Event:
    data: dict[str, Any] = {
        "kind": kind,
        "incident": {"incidentId": incident_id, "targetComponent": "redis", "domain": "backup"},
        "decision": {"reason": "budget spent"},
    }
    return new_event("system/self.healing.notify", data, now_ms=int(time.time() * 1000))


def settings(base: str, minutes: int) -> NotifiersSettings:
    return NotifiersSettings.model_validate(
        {"quietWindowMinutes": minutes, "webhook": {"url": f"{base}/hook"}}
    )


async def test_second_escalation_inside_the_quiet_window_is_not_announced(bus: Bus) -> None:
    with played_service() as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 60))
        await sink.handle(notice("backup:redis:a"))
        await sink.handle(notice("backup:redis:a"))  # re-escalated at once: held back
        await sink.handle(notice("backup:redis:b"))  # another incident: announced
        await sink.handle(notice("backup:redis:a", kind="all_clear"))  # always announced
        kinds = [(p.body["incidentId"], p.body["kind"]) for p in hook.posts]
        assert kinds == [
            ("backup:redis:a", "escalated"),
            ("backup:redis:b", "escalated"),
            ("backup:redis:a", "all_clear"),
        ]
        assert sink.quieted == 1


async def test_redelivery_after_a_failed_send_is_not_held_back(bus: Bus) -> None:
    answers = iter([Reply(status=400), Reply(status=204)])

    def respond(_posted: Posted) -> Reply:
        return next(answers)

    with played_service(respond) as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 60))
        event = notice("backup:redis:c")
        with pytest.raises(NotificationFailed):
            await sink.handle(event)
        await sink.handle(event)  # the consumer's redelivery of the same event
        assert len(hook.posts) == 2 and sink.sent == 1 and sink.quieted == 0


async def test_window_zero_announces_every_escalation(bus: Bus) -> None:
    with played_service() as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 0))
        await sink.handle(notice("backup:redis:d"))
        await sink.handle(notice("backup:redis:d"))
        assert len(hook.posts) == 2
