"""Live progress of backup runs: stages in a short Redis stream per run, bytes in memory.

Stages (snapshot, ship, done) go to `{ns}:progress:<runId>` so `selfheal backup run
--follow` works whichever daemon took the run; byte counts change too often for
that and stay in this process (`LIVE`), read by the follow handler when the run is
local.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from selfheal.bus.streams import Bus

PROGRESS_TTL_S = 3600
FIELD = "json"
PROGRESS_MAXLEN = 200


@dataclass
class LiveProgress:
    """Bytes moved so far in a local run."""

    run_id: str
    stage: str = "queued"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        """Bytes per second since the run started shipping."""
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


LIVE: dict[str, LiveProgress] = {}


def progress_key(bus: Bus, run_id: str) -> str:
    """The per-run stage stream."""
    return f"{bus.keys.tag}:progress:{run_id}"


def read_entry(fields: dict[str, str]) -> dict[str, Any]:
    """One stage entry as it was emitted (an entry of another shape reads as empty)."""
    try:
        found = json.loads(fields.get(FIELD, "{}"))
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


class ProgressReporter:
    """Reports one run's progress."""

    def __init__(self, bus: Bus, *, run_id: str) -> None:
        self.bus = bus
        self.run_id = run_id
        self.live = LIVE.setdefault(run_id, LiveProgress(run_id))

    async def _emit(self, fields: dict[str, Any]) -> None:
        key = progress_key(self.bus, self.run_id)
        # One JSON field per entry: a follower gets numbers back as numbers.
        body = json.dumps({k: v for k, v in fields.items() if v is not None})
        await self.bus.client.xadd(key, {FIELD: body}, maxlen=PROGRESS_MAXLEN, approximate=True)
        await self.bus.client.expire(key, PROGRESS_TTL_S)

    async def stage(self, name: str, *, total: int | None = None) -> None:
        """A new stage began."""
        self.live.stage = name
        if total is not None:
            self.live.total = total
            self.live.done = 0
            self.live.started = time.monotonic()
        await self._emit({"stage": name, "total": total})

    def bytes(self, done: int, total: int) -> None:
        """Transfer callback (synchronous, cheap)."""
        self.live.done = done
        self.live.total = total

    async def finish(self, status: str, detail: str | None) -> None:
        """The run ended."""
        self.live.stage = status
        await self._emit(
            {
                "stage": "done",
                "status": status,
                "detail": detail,
                "bytes": self.live.done,
                "total": self.live.total,
                "rateBps": int(self.live.rate()),
            }
        )
        LIVE.pop(self.run_id, None)
