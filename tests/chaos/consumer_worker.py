"""A consumer process for chaos tests: handles one event slowly, so it can be killed mid-way.

Usage: python -m tests.chaos.consumer_worker PORT NAMESPACE MARKER_FILE
It writes MARKER_FILE when its handler has started, then sleeps far longer than any test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import redis.asyncio as aioredis

from selfheal.bus.consumer import ConsumerOptions, StreamConsumer
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.core.events import Event

EVENT = "test/chaos.work"
GROUP = "chaos-handler"


async def main(port: int, namespace: str, marker: Path) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=port)
    bus = Bus(client, Keys(namespace))

    async def handle(event: Event) -> None:
        await anyio.Path(marker).write_text(event.id)
        await anyio.sleep(3600)  # killed long before this ends

    consumer = StreamConsumer(
        bus, EVENT, GROUP, "doomed", handle, options=ConsumerOptions(block_ms=100)
    )
    await consumer.run()


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
