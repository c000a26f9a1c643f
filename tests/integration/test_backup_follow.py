"""`backup run --follow` on a real Redis: it always ends, and within a bound (issue 11.10)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from selfheal.backup.plane import BackupPlane
from selfheal.backup.progress import ProgressReporter
from selfheal.backup.service import backup_lock_key, now_ms
from selfheal.bus.lock import RedisLock
from selfheal.bus.streams import Bus
from selfheal.config import Settings, load_config
from selfheal.core.events import BACKUP_REQUESTED, new_event
from selfheal.errors import ControlError
from selfheal.healing.domains import Domains
from selfheal.telemetry import Telemetry

pytestmark = pytest.mark.anyio

IDLE_S = 1.0


def settings(tmp: Path, *, redis_enabled: bool = True) -> Settings:
    doc = {
        "selfheal": {
            "stateDir": str(tmp / "state"),
            "backups": {"redis": {"enabled": redis_enabled}, "typesense": {"enabled": False}},
        }
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(doc))
    return load_config(path, {"HOME": str(tmp)}).settings


def plane(bus: Bus, telemetry: Telemetry, cfg: Settings) -> BackupPlane:
    made = BackupPlane(
        settings=lambda: cfg,
        bus=lambda: bus,
        telemetry=telemetry,
        consumer_name="test",
        stopping=lambda: False,
        domains=Domains(),
    )
    made.follow_idle_s = IDLE_S
    return made


async def follow(made: BackupPlane, bus: Bus, run_id: str) -> list[dict[str, Any]]:
    return [item async for item in made._follow(bus, run_id, "redis")]


async def test_a_run_nobody_picks_up_ends_with_an_error(
    tmp_path: Path, bus: Bus, telemetry: Telemetry
) -> None:
    made = plane(bus, telemetry, settings(tmp_path))
    started = time.monotonic()
    with anyio.fail_after(IDLE_S + 5), pytest.raises(ControlError) as caught:
        await follow(made, bus, "never-run")  # no runner consumes the request
    assert caught.value.code == "timeout"
    assert (
        "no progress for 1s" in caught.value.message and "no redis backup" in caught.value.message
    )
    assert time.monotonic() - started >= IDLE_S


async def test_a_run_queued_behind_a_running_one_waits_then_ends(
    tmp_path: Path, bus: Bus, telemetry: Telemetry
) -> None:
    made = plane(bus, telemetry, settings(tmp_path))
    other = RedisLock(bus.client, backup_lock_key(bus, "redis"))
    assert await other.acquire()  # another redis backup is running; ours is queued
    seen: list[dict[str, Any]] = []

    async def run_later() -> None:
        await anyio.sleep(3 * IDLE_S)  # longer than the idle bound: the lock keeps us waiting
        await other.release()
        reporter = ProgressReporter(bus, run_id="queued-run")
        await reporter.stage("snapshot")
        await reporter.finish("delivered", "redis/redis-x.rdb")

    with anyio.fail_after(3 * IDLE_S + 10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_later)
            seen = await follow(made, bus, "queued-run")
    assert [i["stage"] for i in seen] == ["snapshot", "done"]
    assert seen[-1]["status"] == "delivered"


async def test_a_target_disabled_after_the_request_ends_the_follow(
    tmp_path: Path, bus: Bus, telemetry: Telemetry
) -> None:
    made = plane(bus, telemetry, settings(tmp_path, redis_enabled=False))
    event = new_event(BACKUP_REQUESTED, {"target": "redis", "runId": "r1"}, now_ms=now_ms())
    await made.service().handle(event)  # the runner skips it
    with anyio.fail_after(5):
        seen = await follow(made, bus, "r1")
    assert seen[-1]["stage"] == "done" and seen[-1]["status"] == "skipped"
    assert "selfheal.backups.redis.enabled is false" in seen[-1]["detail"]
    with pytest.raises(ControlError) as caught:
        await made.handlers()["backup.run"]({"target": "redis", "follow": True})
    assert caught.value.code == "disabled"
