"""The scheduler: turns cron ticks into `system/backup.requested` (and scheduled restore
drills into `system/backup.drill.requested`), once across daemons.

Each tick is published with the idempotency key job+tick, so several daemons publish
it once. The last tick handled per job is kept in Redis: after the machine slept
through ticks, the latest missed one runs once on wake (when catch-up is on; a drill
always runs once: one proof on wake is enough).

One task serves every job. Each job's next fire time is kept in memory, so a tick
touches Redis only for the jobs that are due (one MGET for their last ticks, one
pipeline for the new ones); a look with nothing due costs a scan of those times.
Sleeps are bounded so config reloads and clock jumps are noticed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from selfheal.backup.service import TARGETS
from selfheal.bus.streams import Bus, as_text
from selfheal.config import Settings
from selfheal.core.events import BACKUP_DRILL_REQUESTED, BACKUP_REQUESTED, new_event
from selfheal.core.schedule import Schedule, parse_schedule, tick_key, ticks_between

log = logging.getLogger("selfheal.scheduler")

MAX_SLEEP_S = 30.0
# Only the newest two due ticks matter: the one to run, and whether any was missed.
_DUE_LOOKBACK = 2


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Job:
    """One schedule to fire: a target's backups, or its restore drills."""

    name: str  # names its ticks and its last-tick record: "redis", "drill:redis"
    target: str
    event: str
    schedule: Schedule
    catch_up: bool

    def describe(self) -> str:
        kind = "restore drill" if self.event == BACKUP_DRILL_REQUESTED else "backup"
        return f"{kind} of {self.target}"


def scheduled_jobs(settings: Settings) -> list[Job]:
    """The jobs of every enabled target: its backups, and its drills when scheduled."""
    jobs: list[Job] = []
    for target in TARGETS:
        backup = getattr(settings.backups, target)
        if not backup.enabled:
            continue
        jobs.append(
            Job(target, target, BACKUP_REQUESTED, parse_schedule(backup.schedule), backup.catch_up)
        )
        if backup.drill is not None:
            drill = parse_schedule(backup.drill)
            jobs.append(Job(f"drill:{target}", target, BACKUP_DRILL_REQUESTED, drill, True))
    return jobs


def upcoming(settings: Settings, now: datetime) -> dict[str, tuple[Schedule, datetime]]:
    """Each enabled target's backup schedule and its next fire time after `now`."""
    return {
        job.target: (job.schedule, job.schedule.next_after(now))
        for job in scheduled_jobs(settings)
        if job.event == BACKUP_REQUESTED
    }


class Scheduler:
    """Service: publishes due backup and drill requests."""

    name = "scheduler"

    def __init__(
        self,
        bus: Bus,
        settings: Callable[[], Settings],
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_sleep_s: float = MAX_SLEEP_S,
        jobs: Callable[[Settings], Sequence[Job]] = scheduled_jobs,
    ) -> None:
        self.bus = bus
        self._settings = settings
        self._clock = clock
        self.max_sleep_s = max_sleep_s
        self._jobs_of = jobs
        self._jobs: Sequence[Job] = ()
        self._jobs_from: Settings | None = None
        # When each job fires next, as of the last look (absent: look in Redis now).
        self._next: dict[Job, datetime] = {}
        self.published: list[str] = []
        self._start_id = f"{socket.gethostname()}:{os.getpid()}:{int(clock().timestamp())}"

    def _last_key(self, job: Job) -> str:
        return f"{self.bus.keys.tag}:schedule:last:{job.name}"

    def jobs(self) -> Sequence[Job]:
        """The current config's jobs; a reload keeps the next fire times of unchanged ones."""
        settings = self._settings()
        if settings is not self._jobs_from:
            self._jobs, self._jobs_from = self._jobs_of(settings), settings
            self._next = {job: self._next[job] for job in self._jobs if job in self._next}
        return self._jobs

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish ticks until cancelled."""
        task_status.started()
        await self._run_at_start()
        while True:
            next_due = await self.tick()
            wait = self.max_sleep_s
            if next_due is not None:
                wait = min(wait, max(0.05, (next_due - self._clock()).total_seconds()))
            await anyio.sleep(wait)

    async def _run_at_start(self) -> None:
        backups = self._settings().backups
        for target in TARGETS:
            target_settings = getattr(backups, target)
            if target_settings.enabled and target_settings.run_at_start:
                key = f"{target}@start:{self._start_id}"
                await self._publish(BACKUP_REQUESTED, target, key, "start")

    async def tick(self) -> datetime | None:
        """Publish what is due now; return the soonest next tick."""
        now = self._clock()
        jobs = self.jobs()
        due = [job for job in jobs if self._next.get(job, now) <= now]
        if due:
            await self._fire(due, now)
        return min(self._next.values(), default=None)

    async def _fire(self, jobs: list[Job], now: datetime) -> None:
        """Run each job's newest due tick (once) and record it; the jobs' next fire times
        are kept only once that is done, so a failed look is made again."""
        client = self.bus.client
        stored = await client.mget([self._last_key(job) for job in jobs])
        records: dict[str, tuple[str, bool]] = {}  # key -> (tick, only if absent)
        for job, raw in zip(jobs, stored, strict=True):
            if raw is None:
                # First look ever: count from now (no catch-up of the past).
                records[self._last_key(job)] = (now.isoformat(), True)
                continue
            last = datetime.fromisoformat(as_text(raw))
            due = ticks_between(job.schedule, last, now, limit=_DUE_LOOKBACK)
            if not due:
                continue
            tick, missed = due[-1], len(due) > 1
            if missed and not job.catch_up:
                log.info("%s: missed ticks skipped (catch-up off)", job.describe())
            else:
                if missed:
                    log.info("%s: ticks missed while asleep; running once", job.describe())
                await self._publish(job.event, job.target, tick_key(job.name, tick), "schedule")
            records[self._last_key(job)] = (tick.isoformat(), False)
        if records:
            async with client.pipeline(transaction=False) as pipe:
                for key, (value, only_if_absent) in records.items():
                    pipe.set(key, value, nx=only_if_absent)
                await pipe.execute()
        self._next.update((job, job.schedule.next_after(now)) for job in jobs)

    async def _publish(self, name: str, target: str, key: str, trigger: str) -> None:
        event = new_event(
            name,
            {"target": target, "trigger": trigger},
            now_ms=int(self._clock().timestamp() * 1000),
            idempotency_key=key,
        )
        if await self.bus.publish(event, dedupe=True) is not None:
            self.published.append(key)
            log.info("%s requested (%s)", name.removeprefix("system/"), key)
