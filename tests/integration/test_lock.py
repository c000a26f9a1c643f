"""The Redis lock against a real redis-server: exclusive, renewed, lost → work stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
import redis.asyncio as aioredis

from selfheal.bus.lock import LockBusy, LockLost, RedisLock
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield c
    finally:
        await c.aclose()


async def test_second_holder_is_refused_and_lock_is_released(client: aioredis.Redis) -> None:
    first = RedisLock(client, "{t}:lock:redis", ttl_ms=1000)
    second = RedisLock(client, "{t}:lock:redis", ttl_ms=1000)
    async with first.held():
        with pytest.raises(LockBusy):
            async with second.held():
                pass
    async with second.held():
        assert await second.holder() == second.token


async def test_lock_is_renewed_past_its_ttl(client: aioredis.Redis) -> None:
    lock = RedisLock(client, "{t}:lock:long", ttl_ms=300)
    async with lock.held():
        await anyio.sleep(1.0)  # three times the TTL: only renewal keeps it
        assert await lock.holder() == lock.token
    assert await lock.holder() is None


async def test_losing_the_lock_stops_the_work(client: aioredis.Redis) -> None:
    lock = RedisLock(client, "{t}:lock:lost", ttl_ms=300)
    reached_end = False
    with anyio.fail_after(5), pytest.raises(LockLost):
        async with lock.held():
            await client.set("{t}:lock:lost", "someone-else")  # taken over
            await anyio.sleep(3)
            reached_end = True
    assert not reached_end
    assert await client.get("{t}:lock:lost") == b"someone-else", "not released: not ours"
