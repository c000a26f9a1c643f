"""The scheduler: turns cron ticks into `system/backup.requested`, once across daemons.

Each tick is published with the idempotency key target+tick, so several daemons
publish it once. The last tick handled per target is kept in Redis: after the
machine slept through ticks, the latest missed one runs once on wake (when
catch-up is on). Sleeps are bounded so config reloads and clock jumps are noticed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
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


def _utcnow() -> datetime:
    return datetime.now(UTC)


def upcoming(settings: Settings, now: datetime) -> dict[str, tuple[Schedule, datetime]]:
    """Each enabled target's schedule and its next fire time after `now`."""
    found: dict[str, tuple[Schedule, datetime]] = {}
    for target in TARGETS:
        backup = getattr(settings.backups, target)
        if backup.enabled:
            schedule = parse_schedule(backup.schedule)
            found[target] = (schedule, schedule.next_after(now))
    return found


class Scheduler:
    """Service: publishes due backup requests."""

    name = "scheduler"

    def __init__(
        self,
        bus: Bus,
        settings: Callable[[], Settings],
        *,
        clock: Callable[[], datetime] = _utcnow,
        max_sleep_s: float = MAX_SLEEP_S,
    ) -> None:
        self.bus = bus
        self._settings = settings
        self._clock = clock
        self.max_sleep_s = max_sleep_s
        self.published: list[str] = []
        self._start_id = f"{socket.gethostname()}:{os.getpid()}:{int(clock().timestamp())}"

    def _last_key(self, target: str) -> str:
        return f"{self.bus.keys.tag}:schedule:last:{target}"

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
                await self._publish(target, f"{target}@start:{self._start_id}", "start")

    async def tick(self) -> datetime | None:
        """Publish what is due now; return the soonest next tick."""
        now = self._clock()
        soonest: datetime | None = None
        backups = self._settings().backups
        for target in TARGETS:
            target_settings = getattr(backups, target)
            if not target_settings.enabled:
                continue
            schedule = parse_schedule(target_settings.schedule)
            raw = await self.bus.client.get(self._last_key(target))
            if raw is None:
                # First run ever: start counting from now (no catch-up of the past).
                await self.bus.client.set(self._last_key(target), now.isoformat(), nx=True)
                last = now
            else:
                last = datetime.fromisoformat(as_text(raw))
            due = ticks_between(schedule, last, now)
            if due:
                missed = len(due) - 1
                tick = due[-1]
                if missed and not target_settings.catch_up:
                    log.info("%s: %d missed ticks skipped (catch-up off)", target, len(due))
                elif missed:
                    log.info("%s: %d ticks missed while asleep; running once", target, missed)
                if not missed or target_settings.catch_up:
                    await self._publish(target, tick_key(target, tick), "schedule")
                await self.bus.client.set(self._last_key(target), tick.isoformat())
            upcoming = schedule.next_after(now)
            soonest = upcoming if soonest is None else min(soonest, upcoming)
            if target_settings.drill is not None:
                upcoming = await self._drill_tick(
                    target, parse_schedule(target_settings.drill), now
                )
                soonest = min(soonest, upcoming)
        return soonest

    async def _drill_tick(self, target: str, schedule: Schedule, now: datetime) -> datetime:
        """Request the target's drill when its schedule came due (once for any number of
        missed ticks: one proof on wake is enough); return its next tick."""
        key = self._last_key(f"drill:{target}")
        raw = await self.bus.client.get(key)
        if raw is None:
            await self.bus.client.set(key, now.isoformat(), nx=True)
        else:
            due = ticks_between(schedule, datetime.fromisoformat(as_text(raw)), now)
            if due:
                event = new_event(
                    BACKUP_DRILL_REQUESTED,
                    {"target": target, "trigger": "schedule"},
                    now_ms=int(now.timestamp() * 1000),
                    idempotency_key=f"drill:{tick_key(target, due[-1])}",
                )
                if await self.bus.publish(event, dedupe=True) is not None:
                    log.info("restore drill of %s requested", target)
                await self.bus.client.set(key, due[-1].isoformat())
        return schedule.next_after(now)

    async def _publish(self, target: str, key: str, trigger: str) -> None:
        event = new_event(
            BACKUP_REQUESTED,
            {"target": target, "trigger": trigger},
            now_ms=int(self._clock().timestamp() * 1000),
            idempotency_key=key,
        )
        if await self.bus.publish(event, dedupe=True) is not None:
            self.published.append(key)
            log.info("backup %s requested (%s)", target, key)
