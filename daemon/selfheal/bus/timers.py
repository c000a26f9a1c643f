"""The timer pump: moves due delayed events into their streams.

Timers live in Redis (a sorted set), so they survive a daemon restart; the move
is one Lua script, so with several daemons pumping each timer fires once. The
pump sleeps until the next due time (at most `max_sleep_s`, so timers added by
other daemons are noticed), or until this daemon schedules an earlier one.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus

from selfheal.bus.streams import Bus

log = logging.getLogger("selfheal.bus.timers")

BATCH = 500


class TimerPump:
    """Service: fires due timers."""

    name = "timers"

    def __init__(self, bus: Bus, *, max_sleep_s: float = 1.0) -> None:
        self.bus = bus
        self.max_sleep_s = max_sleep_s
        self.fired = 0
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Re-check now (a timer was scheduled that may be due sooner)."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Pump until cancelled."""
        task_status.started()
        while True:
            sweep = await self.bus.move_due_timers(BATCH)
            self.fired += sweep.moved
            if sweep.moved >= BATCH:
                continue  # more are due right now
            sleep_s = self.max_sleep_s
            if sweep.next_due_ms is not None:
                sleep_s = min(sleep_s, max(0.0, (sweep.next_due_ms - sweep.now_ms) / 1000))
            self._wake = anyio.Event()
            with anyio.move_on_after(sleep_s):
                await self._wake.wait()
