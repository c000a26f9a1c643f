"""The notification sink on a real Redis and a real local webhook: the quiet window."""

from __future__ import annotations

import time
from typing import Any

import pytest

from selfheal.bus.streams import Bus
from selfheal.config.schema_healing import NotifiersSettings
from selfheal.core.events import Event, new_event
from selfheal.healing.notify_sink import NotificationFailed, NotificationSink
from selfheal.spanfile import read_spans
from selfheal.telemetry import Telemetry, current_traceparent
from tests.support.http import Posted, Reply, played_service

pytestmark = pytest.mark.anyio


def notice(incident_id: str, kind: str = "escalated", traceparent: str | None = None) -> Event:
    data: dict[str, Any] = {
        "kind": kind,
        "incident": {"incidentId": incident_id, "targetComponent": "redis", "domain": "backup"},
        "decision": {"reason": "budget spent"},
    }
    now = int(time.time() * 1000)
    return new_event("system/self.healing.notify", data, now_ms=now, traceparent=traceparent)


def settings(base: str, minutes: int) -> NotifiersSettings:
    return NotifiersSettings.model_validate(
        {"quietWindowMinutes": minutes, "webhook": {"url": f"{base}/hook"}}
    )


async def test_second_escalation_inside_the_quiet_window_is_not_announced(
    bus: Bus, telemetry: Telemetry
) -> None:
    with played_service() as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 60), telemetry)
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


async def test_redelivery_after_a_failed_send_is_not_held_back(
    bus: Bus, telemetry: Telemetry
) -> None:
    answers = iter([Reply(status=400), Reply(status=204)])

    def respond(_posted: Posted) -> Reply:
        return next(answers)

    with played_service(respond) as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 60), telemetry)
        event = notice("backup:redis:c")
        with pytest.raises(NotificationFailed):
            await sink.handle(event)
        await sink.handle(event)  # the consumer's redelivery of the same event
        assert len(hook.posts) == 2 and sink.sent == 1 and sink.quieted == 0


async def test_window_zero_announces_every_escalation(bus: Bus, telemetry: Telemetry) -> None:
    with played_service() as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 0), telemetry)
        await sink.handle(notice("backup:redis:d"))
        await sink.handle(notice("backup:redis:d"))
        assert len(hook.posts) == 2


async def test_each_notification_is_a_span_in_the_incidents_trace(
    bus: Bus, telemetry: Telemetry
) -> None:
    answers = iter([Reply(status=400), Reply(status=204)])

    def respond(_posted: Posted) -> Reply:
        return next(answers)

    with telemetry.decision_span("selfheal.route.decide") as decision:
        carried = current_traceparent(decision)
    assert carried is not None
    with played_service(respond) as hook:
        sink = NotificationSink(bus, lambda: settings(hook.base, 60), telemetry)
        event = notice("backup:redis:e", traceparent=carried)
        with pytest.raises(NotificationFailed):
            await sink.handle(event)  # the webhook refuses it
        await sink.handle(event)
        await sink.handle(notice("backup:redis:e"))  # held back by the quiet window
    assert telemetry.force_flush()
    spans = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.notify"]
    assert len(spans) == 3
    failed, sent, quiet = spans
    for span in (failed, sent):
        assert span["context"]["trace_id"] == "0x" + carried.split("-")[1]
        assert span["parent_id"] == "0x" + carried.split("-")[2]
        assert span["attributes"]["selfheal.incident_id"] == "backup:redis:e"
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["selfheal.notifier.webhook"] != "ok"
    assert sent["status"] == {"status_code": "UNSET"}
    assert sent["attributes"]["selfheal.notifier.webhook"] == "ok"
    assert quiet["attributes"]["selfheal.outcome"] == "quiet window"
