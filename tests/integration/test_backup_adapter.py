"""The backup failure adapter: failures feed one incident per target; success closes it."""

from __future__ import annotations

import pytest

from selfheal.bus.consumer import StreamConsumer
from selfheal.bus.streams import Bus
from selfheal.config.schema import RouterSettings
from selfheal.core.events import (
    BACKUP_COMPLETED,
    BACKUP_FAILED,
    BACKUP_FAILURE_ROUTER,
    BACKUP_RETRY_REQUESTED,
    EVENT_DATA_LIMIT,
    SELF_HEALING_COMPLETED,
    SELF_HEALING_REQUESTED,
    compact_json,
    new_event,
)
from selfheal.core.policy import Knobs
from selfheal.healing.backup_adapter import BackupFailureAdapter
from selfheal.healing.router import NOTIFY_REQUESTED, ROUTER_GROUP, Router
from selfheal.telemetry import Telemetry
from tests.support.routing import FAST, backup_domains, now_ms, run_until, stream_events

pytestmark = pytest.mark.anyio

KNOBS = RouterSettings(max_retries=2, sleep_min_ms=30, sleep_max_ms=200, sleep_step_ms=5)


def workers(bus: Bus, router: Router) -> list[StreamConsumer]:
    adapter = BackupFailureAdapter(bus, router, lambda: KNOBS)
    return [
        StreamConsumer(bus, SELF_HEALING_REQUESTED, ROUTER_GROUP, "d", router.handle, options=FAST),
        StreamConsumer(
            bus, BACKUP_FAILED, BACKUP_FAILURE_ROUTER, "d", adapter.on_failed, options=FAST
        ),
        StreamConsumer(
            bus, BACKUP_COMPLETED, BACKUP_FAILURE_ROUTER, "d", adapter.on_completed, options=FAST
        ),
    ]


def failed(attempt: int = 0) -> dict[str, object]:
    return {
        "target": "redis",
        "runId": "r1",
        "attempt": attempt,
        "error": "NAS unreachable",
        "evidence": [{"errno": "EHOSTUNREACH"}],
    }


async def test_failure_becomes_a_retry_of_that_target(bus: Bus, telemetry: Telemetry) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    await bus.publish(new_event(BACKUP_FAILED, failed(), now_ms=now_ms()))

    async def scheduled() -> bool:
        return await bus.client.zcard(bus.keys.timers) == 1

    await run_until(scheduled, *workers(bus, router))
    snapshot = await router.store.load("backup:redis")
    assert snapshot.incident is not None and snapshot.incident.retries_used == 1
    decision = snapshot.last_decision
    assert decision is not None and decision.route_event == BACKUP_RETRY_REQUESTED
    assert decision.route_data["target"] == "redis" and decision.route_data["attempt"] == 1


async def test_success_after_escalation_remediates_and_sends_all_clear(
    bus: Bus, telemetry: Telemetry
) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    hard = {**failed(), "evidence": [{"errno": "ENOSPC"}]}
    await bus.publish(new_event(BACKUP_FAILED, hard, now_ms=now_ms()))

    async def escalated() -> bool:
        snap = await router.store.load("backup:redis")
        return snap.incident is not None and snap.incident.state == "escalated"

    await run_until(escalated, *workers(bus, router))
    await bus.publish(new_event(BACKUP_COMPLETED, {"target": "redis"}, now_ms=now_ms()))

    async def remediated() -> bool:
        snap = await router.store.load("backup:redis")
        return snap.incident is not None and snap.incident.state == "remediated"

    await run_until(remediated, *workers(bus, router))
    kinds = [e.data["kind"] for e in await stream_events(bus, NOTIFY_REQUESTED)]
    assert kinds == ["escalated", "all_clear"]
    statuses = [e.data["status"] for e in await stream_events(bus, SELF_HEALING_COMPLETED)]
    assert statuses == ["escalated", "remediated"]

    # The next failure opens a fresh incident (fresh budget) under the same id.
    await bus.publish(new_event(BACKUP_FAILED, failed(), now_ms=now_ms()))

    async def reopened() -> bool:
        snap = await router.store.load("backup:redis")
        return snap.incident is not None and snap.incident.state == "scheduled"

    await run_until(reopened, *workers(bus, router))


async def test_malformed_backup_failure_is_dead_lettered(bus: Bus, telemetry: Telemetry) -> None:
    router = Router(bus, telemetry, knobs=Knobs, domains=backup_domains())
    await bus.publish(new_event(BACKUP_FAILED, {"target": "../etc"}, now_ms=now_ms()))

    async def buried() -> bool:
        return await bus.client.xlen(bus.keys.dead_letters) == 1

    await run_until(buried, *workers(bus, router))
    [dead] = await bus.dead_letters()
    assert "data.target" in dead["reason"]


async def test_failure_whose_request_would_be_past_the_size_limit_is_dead_lettered_at_once(
    bus: Bus, telemetry: Telemetry
) -> None:
    # The failure itself is at the limit; the request built from it adds its own fields.
    data = {**failed(), "evidence": [{"message": ""}]}
    room = EVENT_DATA_LIMIT - len(compact_json(data))
    data["evidence"] = [{"message": "x" * room}]
    await bus.publish(new_event(BACKUP_FAILED, data, now_ms=now_ms()))
    router = Router(bus, telemetry, knobs=Knobs)

    async def buried() -> bool:
        return await bus.client.xlen(bus.keys.dead_letters) == 1

    await run_until(buried, *workers(bus, router))
    [dead] = await bus.dead_letters()
    assert dead["deliveries"] == "1"
    assert f"more than the {EVENT_DATA_LIMIT} allowed" in dead["reason"]
    assert await bus.client.xlen(bus.keys.stream(SELF_HEALING_REQUESTED)) == 0
