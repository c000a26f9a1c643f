"""The scheduler: scheduled restore drills (one request per due tick, one on wake however
many were missed, none for a target without a drill schedule), catch-up after a sleep,
and one scheduler task serving a thousand schedules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from selfheal.backup.scheduler import Job, Scheduler
from selfheal.bus.streams import Bus
from selfheal.config import load_config
from selfheal.core.events import BACKUP_DRILL_REQUESTED, BACKUP_REQUESTED
from selfheal.core.schedule import parse_schedule
from tests.support.routing import stream_events

pytestmark = pytest.mark.anyio


async def test_drill_ticks_request_one_drill_each(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "selfheal": {
                    "redis": {"namespace": "test"},
                    "stateDir": str(tmp_path / "state"),
                    "backups": {
                        "redis": {"schedule": "0 3 1 1 *", "drill": "*/10 * * * *"},
                        "typesense": {"schedule": "0 3 1 1 *"},
                    },
                }
            }
        )
    )
    settings = load_config(path, {"HOME": str(tmp_path)}).settings
    now = [datetime(2026, 12, 3, 10, 1, tzinfo=UTC)]
    scheduler = Scheduler(bus, lambda: settings, clock=lambda: now[0])

    assert await scheduler.tick() == datetime(2026, 12, 3, 10, 10, tzinfo=UTC)
    assert await stream_events(bus, BACKUP_DRILL_REQUESTED) == []  # first look: no past ticks

    now[0] += timedelta(minutes=10)  # 10:11: the 10:10 tick is due
    await scheduler.tick()
    await scheduler.tick()  # again at the same moment: nothing new
    [first] = await stream_events(bus, BACKUP_DRILL_REQUESTED)
    assert first.data == {"target": "redis", "trigger": "schedule"}

    now[0] += timedelta(hours=5)  # asleep through 30 ticks: one drill on wake
    await scheduler.tick()
    drills = await stream_events(bus, BACKUP_DRILL_REQUESTED)
    assert len(drills) == 2 and {d.data["target"] for d in drills} == {"redis"}


@pytest.mark.parametrize("catch_up", [True, False])
async def test_a_sleep_through_many_backup_ticks_runs_each_target_once_on_wake(
    bus: Bus, tmp_path: Path, catch_up: bool
) -> None:
    path = tmp_path / "c.json"
    every_ten = {"schedule": "*/10 * * * *", "catchUp": catch_up}
    path.write_text(
        json.dumps(
            {
                "selfheal": {
                    "redis": {"namespace": "test"},
                    "stateDir": str(tmp_path / "state"),
                    "backups": {"redis": every_ten, "typesense": every_ten},
                }
            }
        )
    )
    settings = load_config(path, {"HOME": str(tmp_path)}).settings
    now = [datetime(2026, 12, 3, 10, 1, tzinfo=UTC)]
    scheduler = Scheduler(bus, lambda: settings, clock=lambda: now[0])
    await scheduler.tick()  # first look: nothing past is run
    now[0] += timedelta(hours=8, minutes=3)  # the lid was closed: 48 ticks of each missed
    await scheduler.tick()
    await scheduler.tick()  # and again at the same moment: nothing new
    requested = await stream_events(bus, BACKUP_REQUESTED)
    if catch_up:
        assert sorted(e.data["target"] for e in requested) == ["redis", "typesense"]
    else:
        assert requested == []  # the missed ticks are skipped; the next one runs
    now[0] += timedelta(minutes=10)  # the next tick after the wake: one more each
    await scheduler.tick()
    after = await stream_events(bus, BACKUP_REQUESTED)
    assert len(after) == len(requested) + 2


def many_jobs(count: int) -> list[Job]:
    """Job 0 every ten minutes; the others once a day each, in the afternoon."""
    jobs = [Job("job-0000", "redis", BACKUP_REQUESTED, parse_schedule("*/10 * * * *"), True)]
    for i in range(1, count):
        text = f"TZ=Europe/Berlin {i % 60} {12 + (i // 60) % 10} * * *"
        jobs.append(Job(f"job-{i:04d}", "redis", BACKUP_REQUESTED, parse_schedule(text), True))
    return jobs


async def mget_calls(bus: Bus) -> int:
    stats = await bus.client.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def test_one_scheduler_serves_a_thousand_jobs_touching_redis_only_for_due_ones(
    bus: Bus, tmp_path: Path
) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"selfheal": {"stateDir": str(tmp_path / "state")}}))
    settings = load_config(path, {"HOME": str(tmp_path)}).settings
    jobs = many_jobs(1000)
    now = [datetime(2026, 12, 3, 10, 1, tzinfo=UTC)]
    scheduler = Scheduler(bus, lambda: settings, clock=lambda: now[0], jobs=lambda _s: jobs)

    assert await scheduler.tick() == datetime(2026, 12, 3, 10, 10, tzinfo=UTC)
    assert await stream_events(bus, BACKUP_REQUESTED) == []  # first look: no past ticks
    looks = await mget_calls(bus)
    now[0] += timedelta(minutes=5)  # 10:06: nothing due
    assert await scheduler.tick() == datetime(2026, 12, 3, 10, 10, tzinfo=UTC)
    assert await mget_calls(bus) == looks, "a tick with nothing due read Redis"

    now[0] += timedelta(minutes=5)  # 10:11: only job 0's 10:10 tick
    await scheduler.tick()
    [first] = await stream_events(bus, BACKUP_REQUESTED)
    assert first.idempotency_key == "job-0000@2026-12-03T10:10:00Z"

    now[0] += timedelta(days=3)  # asleep: every job missed ticks; each runs once
    await scheduler.tick()
    await scheduler.tick()  # and again at the same moment: nothing new
    keys = [e.idempotency_key for e in await stream_events(bus, BACKUP_REQUESTED)]
    assert len(keys) == 1 + 1000 and len(set(keys)) == len(keys)
    assert {k.split("@")[0] for k in keys} == {job.name for job in jobs}
