"""Routing test helpers: a request in the contract's shape, the router's consumer,
bounded service loops, and the backup domain as the backup plane registers it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from selfheal.bus.consumer import ConsumerOptions, StreamConsumer
from selfheal.bus.streams import Bus
from selfheal.core.events import BACKUP_RETRY_REQUESTED, SELF_HEALING_REQUESTED, Event
from selfheal.healing.domains import Domain, Domains, Probe
from selfheal.healing.router import ROUTER_GROUP, Router


def backup_domains(probe: Probe | None = None) -> Domains:
    """The backup domain as the backup plane registers it (its retries served)."""
    domains = Domains()
    domains.register(Domain("backup", BACKUP_RETRY_REQUESTED, probe=probe))
    domains.serve(BACKUP_RETRY_REQUESTED, "system/backup.redis")
    return domains


FAST = ConsumerOptions(batch=50, block_ms=50, reclaim_idle_ms=200, reclaim_every_s=0.1)
WAIT_S = 20.0


def request(incident: str = "backup:redis:nightly", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sourceFunction": "system/backup.redis",
        "targetComponent": "redis",
        "problemSummary": "copy to NAS failed",
        "attempt": 0,
        "retryPolicy": {"maxRetries": 3, "sleepMinMs": 50, "sleepMaxMs": 1000, "sleepStepMs": 10},
        "evidence": [{"message": "ssh: connect to host nas: Connection timed out"}],
        "playbook": {"actions": ["retry"], "runbook": "docs/runbook.md#nas"},
        "incidentId": incident,
        "domain": "backup",
    }
    data.update(overrides)
    return data


def now_ms() -> int:
    return int(time.time() * 1000)


async def stream_events(bus: Bus, name: str) -> list[Event]:
    raw = await bus.client.xrange(bus.keys.stream(name))
    return [Event.from_wire(fields) for _id, fields in raw]


async def run_until(check: Callable[[], Any], *workers: Any, limit: float = WAIT_S) -> None:
    """Run service loops until `await check()` is truthy."""
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(worker.run)
            while not await check():  # noqa: ASYNC110 - bounded poll of Redis state
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()


def router_consumer(
    bus: Bus, router: Router, name: str = "d1", *, batched: bool = False
) -> StreamConsumer:
    return StreamConsumer(
        bus,
        SELF_HEALING_REQUESTED,
        ROUTER_GROUP,
        name,
        router.handle,
        options=FAST,
        batch_handler=router.handle_batch if batched else None,
    )
