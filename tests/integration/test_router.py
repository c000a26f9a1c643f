"""The router through the real bus and a real redis-server: budgets, escalation, replays."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from selfheal.bus.consumer import StreamConsumer
from selfheal.bus.streams import Bus
from selfheal.bus.timers import TimerPump
from selfheal.core.events import (
    BACKUP_RETRY_REQUESTED,
    SELF_HEALING_COMPLETED,
    SELF_HEALING_REQUESTED,
    Event,
    new_event,
)
from selfheal.core.policy import Knobs
from selfheal.healing.router import NOTIFY_REQUESTED, ROUTER_GROUP, Router
from selfheal.spanfile import read_spans
from selfheal.telemetry import Telemetry
from tests.support.routing import (
    FAST,
    backup_domains,
    now_ms,
    request,
    router_consumer,
    run_until,
    stream_events,
)

pytestmark = pytest.mark.anyio


async def test_budget_of_three_retries_then_one_escalation(bus: Bus, telemetry: Telemetry) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    failures: list[Event] = []

    async def failing_backup(event: Event) -> None:
        # The retried backup fails again and reports it, as the backup domain does.
        failures.append(event)
        data = request(attempt=event.data["attempt"])
        await bus.publish(
            new_event(SELF_HEALING_REQUESTED, data, now_ms=now_ms(), traceparent=event.traceparent)
        )

    backup = StreamConsumer(
        bus, BACKUP_RETRY_REQUESTED, "system/backup.redis", "d1", failing_backup, options=FAST
    )
    await bus.publish(new_event(SELF_HEALING_REQUESTED, request(), now_ms=now_ms()))

    async def escalated() -> bool:
        return await bus.client.xlen(bus.keys.manual_queue) > 0

    await run_until(
        escalated, router_consumer(bus, router), backup, TimerPump(bus, max_sleep_s=0.05)
    )

    assert len(failures) == 3, "exactly maxRetries retries were scheduled and delivered"
    assert [e.data["attempt"] for e in failures] == [1, 2, 3]
    completions = [e.data for e in await stream_events(bus, SELF_HEALING_COMPLETED)]
    statuses = [c["status"] for c in completions]
    assert statuses == ["scheduled", "scheduled", "scheduled", "exhausted"]
    delays = [c["delayMs"] for c in completions[:3]]
    assert delays == sorted(delays) and delays[0] < delays[2], f"growing delays: {delays}"
    assert all(50 <= d <= 1000 for d in delays)

    snapshot = await router.store.load("backup:redis:nightly")
    assert snapshot.incident is not None
    assert snapshot.incident.state == "escalated" and snapshot.incident.retries_used == 3
    [entry] = await router.store.manual_queue()
    assert entry["incidentId"] == "backup:redis:nightly" and "exhausted" in entry["reason"]
    [notify] = await stream_events(bus, NOTIFY_REQUESTED)
    assert notify.data["kind"] == "escalated"

    # Every decision is a span, and the whole incident is one trace.
    telemetry.force_flush()
    spans = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.route.decide"]
    actions = [s["attributes"].get("selfheal.action") for s in spans]
    assert actions.count("retry") == 3 and actions.count("escalate") == 1
    assert len({s["context"]["trace_id"] for s in spans}) == 1, "one trace across retries"


async def test_replayed_and_duplicate_reports_do_not_spend_budget(
    bus: Bus, telemetry: Telemetry
) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    slow = request(
        retryPolicy={"maxRetries": 3, "sleepMinMs": 60_000, "sleepMaxMs": 120_000, "sleepStepMs": 0}
    )
    first = new_event(SELF_HEALING_REQUESTED, slow, now_ms=now_ms())
    await bus.publish(first)
    consumer = router_consumer(bus, router)

    async def decided() -> bool:
        return router.stats.decisions == 1

    await run_until(decided, consumer)
    # The same event replayed, and a fresh report with attempt=0 while the retry is pending.
    await bus.publish(first)
    await bus.publish(new_event(SELF_HEALING_REQUESTED, slow, now_ms=now_ms()))

    async def joined() -> bool:
        return consumer.stats.duplicates == 1 and router.stats.joined == 1

    await run_until(joined, consumer)
    snapshot = await router.store.load("backup:redis:nightly")
    assert snapshot.incident is not None and snapshot.incident.retries_used == 1
    assert await bus.client.zcard(bus.keys.timers) == 1, "still one retry pending"


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batch"])
@pytest.mark.parametrize(
    ("evidence", "why"),
    [
        ({"errno": "ENOSPC"}, "errno ENOSPC"),
        # Free-form evidence: the text under a key of the producer's own counts too.
        (
            {"kind": "error", "detail": "OSError: [Errno 28] No space left on device"},
            "message matches 'no space left on device'",
        ),
    ],
    ids=["errno", "free-form detail"],
)
async def test_hard_failure_escalates_at_once(
    bus: Bus, telemetry: Telemetry, evidence: dict[str, Any], why: str, batched: bool
) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    data = request(incident="backup:typesense:disk", evidence=[evidence])
    await bus.publish(new_event(SELF_HEALING_REQUESTED, data, now_ms=now_ms()))

    async def escalated() -> bool:
        return await bus.client.xlen(bus.keys.manual_queue) == 1

    await run_until(escalated, router_consumer(bus, router, batched=batched))
    [done] = await stream_events(bus, SELF_HEALING_COMPLETED)
    assert done.data["status"] == "escalated" and done.data["failureClass"] == "resource_exhausted"
    assert done.data["reason"] == f"hard failure: resource_exhausted ({why})"
    assert await bus.client.zcard(bus.keys.timers) == 0, "nothing retried"


async def test_invalid_request_answered_and_dead_lettered(bus: Bus, telemetry: Telemetry) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    bad = request()
    bad["retryPolicy"]["sleepMinMs"] = -5
    await bus.publish(new_event(SELF_HEALING_REQUESTED, bad, now_ms=now_ms()))

    async def buried() -> bool:
        return await bus.client.xlen(bus.keys.dead_letters) == 1

    await run_until(buried, router_consumer(bus, router))
    [done] = await stream_events(bus, SELF_HEALING_COMPLETED)
    assert done.data["status"] == "invalid"
    assert done.data["field"] == "retryPolicy.sleepMinMs"
    [dead] = await bus.dead_letters()
    assert "retryPolicy.sleepMinMs" in dead["reason"]
    assert json.loads(dead["fields"])["name"] == SELF_HEALING_REQUESTED


async def test_free_form_route_is_refused(bus: Bus, telemetry: Telemetry) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    data = request(
        incident="backup:x:route", routeTo={"event": "system/anything.goes", "data": {"rm": "-rf"}}
    )
    await bus.publish(new_event(SELF_HEALING_REQUESTED, data, now_ms=now_ms()))

    async def escalated() -> bool:
        return await bus.client.xlen(bus.keys.manual_queue) == 1

    await run_until(escalated, router_consumer(bus, router))
    assert await stream_events(bus, "system/anything.goes") == []
    [done] = await stream_events(bus, SELF_HEALING_COMPLETED)
    assert "system/anything.goes" in done.data["reason"]


async def test_redelivery_after_a_crash_before_the_ack_adds_no_second_completion(
    bus: Bus, telemetry: Telemetry
) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    event = new_event(SELF_HEALING_REQUESTED, request(incident="backup:crash"), now_ms=now_ms())
    await bus.ensure_group(SELF_HEALING_REQUESTED, ROUTER_GROUP)
    await bus.publish(event)
    # The effect is committed but the daemon dies before acking: the entry stays in the stream.
    await router.handle(event)
    consumer = router_consumer(bus, router)

    async def acked() -> bool:
        pending = await bus.client.xpending(bus.keys.stream(SELF_HEALING_REQUESTED), ROUTER_GROUP)
        return consumer.stats.handled == 1 and pending["pending"] == 0

    await run_until(acked, consumer)
    completions = await stream_events(bus, SELF_HEALING_COMPLETED)
    assert [c.data["status"] for c in completions] == ["scheduled"]
    snapshot = await router.store.load("backup:crash")
    assert snapshot.incident is not None and snapshot.incident.retries_used == 1


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "batched"])
async def test_pause_rechecks_the_probe_and_retries_once_the_target_is_back(
    bus: Bus, telemetry: Telemetry, batched: bool
) -> None:
    healthy = [False]
    checks: list[bool] = []

    async def nas_probe(req: object) -> bool:
        checks.append(healthy[0])
        return healthy[0]

    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains(nas_probe))
    away = request(
        incident="backup:redis:nas-away",
        evidence=[{"kind": "transport.unavailable", "errno": "ENOTCONN"}],
    )
    await bus.publish(new_event(SELF_HEALING_REQUESTED, away, now_ms=now_ms()))
    pump = TimerPump(bus, max_sleep_s=0.05)

    async def paused_twice() -> bool:
        snap = await router.store.load("backup:redis:nas-away")
        return snap.incident is not None and snap.incident.pauses >= 2

    await run_until(paused_twice, router_consumer(bus, router, batched=batched), pump)
    assert await stream_events(bus, BACKUP_RETRY_REQUESTED) == [], "no retry while it is away"
    healthy[0] = True

    async def retried() -> bool:
        return bool(await stream_events(bus, BACKUP_RETRY_REQUESTED))

    await run_until(retried, router_consumer(bus, router, batched=batched), pump)
    snapshot = await router.store.load("backup:redis:nas-away")
    assert snapshot.incident is not None
    assert snapshot.incident.retries_used == 1, "pauses did not spend the retry budget"
    statuses = [e.data["status"] for e in await stream_events(bus, SELF_HEALING_COMPLETED)]
    assert statuses[:2] == ["paused", "paused"] and statuses[-1] == "scheduled"
    assert checks[0] is False and checks[-1] is True
    # Each re-check carries the span of the decision that scheduled it: the decisions
    # of the incident are one trace, each the child of the one before.
    assert telemetry.force_flush()
    spans = [s for s in read_spans(telemetry.span_file) if s["name"] == "selfheal.route.decide"]
    assert len(spans) >= 3
    assert spans[0]["parent_id"] is None
    for before, after in itertools.pairwise(spans):
        assert after["context"]["trace_id"] == before["context"]["trace_id"]
        assert after["parent_id"] == before["context"]["span_id"]
    [retry] = await stream_events(bus, BACKUP_RETRY_REQUESTED)
    assert retry.traceparent is not None
    assert "0x" + retry.traceparent.split("-")[2] == spans[-1]["context"]["span_id"]
