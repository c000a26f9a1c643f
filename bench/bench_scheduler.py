"""One scheduler serving many schedules: next-fire cost, tick cost, tasks.

Run: python -m bench.bench_scheduler [--targets 1000] [--rounds 5] [--json]

A real redis-server holds the bus; the daemon's own `Scheduler` is given `--targets`
jobs (daily schedules in a named time zone, spread over the afternoon, the cron
shapes operators write) instead of the config's two, with a clock the bench moves.
Measured, each beside an anchor from the same run (medians over `--rounds`):

- next fire time per job (µs): ours (cron with DST rules) vs a bare `cronsim` step;
- a tick with nothing due (ms) vs one MGET of every job's last-tick key, the least
  a tick that asked Redis about every job would cost;
- a tick after a three-day sleep, every job due once (ms) vs a raw redis-py pipeline
  of as many XADDs;
- how many tasks the running scheduler adds (one, whatever the count).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from cronsim import CronSim
from tests.support.servers import RedisServer

from bench.report import save_and_print
from selfheal.backup.scheduler import Job, Scheduler
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.config import load_config
from selfheal.core.events import BACKUP_REQUESTED
from selfheal.core.schedule import parse_schedule

START = datetime(2026, 12, 3, 10, 1, tzinfo=UTC)


def jobs_of(count: int) -> list[Job]:
    """`count` daily jobs at distinct minutes of the Berlin afternoon."""
    return [
        Job(
            f"job-{i:05d}",
            "redis",
            BACKUP_REQUESTED,
            parse_schedule(f"TZ=Europe/Berlin {i % 60} {12 + (i // 60) % 10} * * *"),
            True,
        )
        for i in range(count)
    ]


def micros_per(count: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return (time.perf_counter() - started) / count * 1e6


async def millis(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return (time.perf_counter() - started) * 1e3


async def one_round(client: aioredis.Redis, settings: Any, jobs: list[Job]) -> dict[str, float]:
    await client.flushall()
    bus = Bus(client, Keys("bench"))
    now = [START]
    scheduler = Scheduler(bus, lambda: settings, clock=lambda: now[0], jobs=lambda _s: jobs)
    count = len(jobs)
    local = START.astimezone(jobs[0].schedule.zone)
    result = {
        "next_fire_us": micros_per(count, lambda: [j.schedule.next_after(START) for j in jobs]),
        "anchor_cronsim_us": micros_per(
            count, lambda: [next(CronSim(j.schedule.expression, local)) for j in jobs]
        ),
        "first_look_ms": await millis(scheduler.tick),
    }
    now[0] += timedelta(minutes=5)
    result["idle_tick_ms"] = await millis(scheduler.tick)
    keys = [f"{bus.keys.tag}:schedule:last:{job.name}" for job in jobs]
    result["anchor_mget_ms"] = await millis(lambda: client.mget(keys))
    now[0] += timedelta(days=3)
    result["all_due_tick_ms"] = await millis(scheduler.tick)
    published = len(scheduler.published)
    if published != count:
        raise SystemExit(f"bench_scheduler: {published} of {count} due jobs were published")

    async def raw_xadds() -> None:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(count):
                pipe.xadd("bench:raw", {"i": i})
            await pipe.execute()

    result["anchor_xadd_pipeline_ms"] = await millis(raw_xadds)
    return result


async def tasks_added(client: aioredis.Redis, settings: Any, jobs: list[Job]) -> int:
    """Tasks alive while the scheduler runs, beyond those before it started."""
    await client.flushall()
    scheduler = Scheduler(Bus(client, Keys("bench")), lambda: settings, jobs=lambda _s: jobs)
    before = len(asyncio.all_tasks())
    async with anyio.create_task_group() as group:
        await group.start(scheduler.run)
        for _ in range(3000):  # bounded: 30 s
            if await client.exists(f"{{bench}}:schedule:last:{jobs[-1].name}"):
                break
            await anyio.sleep(0.01)
        else:
            raise SystemExit("bench_scheduler: the running scheduler never looked at its jobs")
        during = len(asyncio.all_tasks())
        group.cancel_scope.cancel()
    return during - before


async def measure(folder: Path, count: int, rounds: int) -> dict[str, Any]:
    config = folder / "config.json"
    config.write_text('{"selfheal": {"stateDir": "%s"}}' % (folder / "state"))
    settings = load_config(config, {"HOME": str(folder)}).settings
    server = RedisServer(folder / "redis").start()
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    jobs = jobs_of(count)
    try:
        runs = [await one_round(client, settings, jobs) for _ in range(rounds)]
        added = await tasks_added(client, settings, jobs)
    finally:
        await client.aclose()
        server.stop()
    med = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    return {
        "targets": count,
        "rounds": rounds,
        **med,
        "ratio_next_fire_to_cronsim": round(med["next_fire_us"] / med["anchor_cronsim_us"], 2),
        "ratio_idle_tick_to_mget": round(med["idle_tick_ms"] / med["anchor_mget_ms"], 2),
        "ratio_due_tick_to_pipeline": round(
            med["all_due_tick_ms"] / med["anchor_xadd_pipeline_ms"], 1
        ),
        "tasks_added": added,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.targets < 1 or args.rounds < 1:
        raise SystemExit("bench_scheduler: --targets and --rounds must be at least 1")
    folder = Path(tempfile.mkdtemp(prefix="shb-", dir="/tmp"))
    try:
        result = anyio.run(measure, folder, args.targets, args.rounds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    save_and_print("scheduler", result, as_json=args.json, width=30)


if __name__ == "__main__":
    main()
