"""Scheduled restore drills: one request per due tick, one on wake however many were
missed, none for a target without a drill schedule."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from selfheal.backup.scheduler import Scheduler
from selfheal.bus.streams import Bus
from selfheal.config import load_config
from selfheal.core.events import BACKUP_DRILL_REQUESTED, BACKUP_REQUESTED
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
