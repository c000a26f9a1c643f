"""A consumer process SIGKILLed in the middle of handling: its entry is reclaimed, handled once."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from selfheal.bus.consumer import ConsumerOptions, StreamConsumer
from selfheal.bus.streams import Bus
from selfheal.core.events import Event, new_event
from tests.chaos.consumer_worker import EVENT, GROUP
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


async def test_killed_consumer_entry_is_reclaimed_and_handled_once(
    tmp_path: Path, bus: Bus, redis_server: RedisServer
) -> None:
    await bus.ensure_group(EVENT, GROUP)
    sent = new_event(EVENT, {"job": 1}, now_ms=int(time.time() * 1000))
    await bus.publish(sent)
    marker = tmp_path / "started"
    worker = await anyio.open_process(
        [
            sys.executable,
            "-m",
            "tests.chaos.consumer_worker",
            str(redis_server.port),
            bus.keys.namespace,
            str(marker),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        with anyio.fail_after(20):
            while not await anyio.Path(marker).exists():  # noqa: ASYNC110 - polls a file
                await anyio.sleep(0.02)
        assert await anyio.Path(marker).read_text() == sent.id
        worker.kill()  # SIGKILL mid-handling: no ack, no cleanup
        with anyio.fail_after(10):
            await worker.wait()
    finally:
        if worker.returncode is None:
            worker.kill()

    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.id)

    survivor = StreamConsumer(
        bus,
        EVENT,
        GROUP,
        "survivor",
        handle,
        options=ConsumerOptions(block_ms=50, reclaim_idle_ms=300, reclaim_every_s=0.1),
    )
    with anyio.fail_after(20):
        while not handled:
            await survivor.poll_once()
    for _ in range(5):  # further polls must not hand it out again
        await survivor.poll_once()
    assert handled == [sent.id]
    assert survivor.stats.reclaimed == 1
    assert (await bus.client.xpending(bus.keys.stream(EVENT), GROUP))["pending"] == 0
