"""The Redis lock against a real redis-server: exclusive, renewed, lost → work stopped."""

from __future__ import annotations

import anyio
import pytest
import redis.asyncio as aioredis

from selfheal.bus.lock import LockBusy, LockLost, RedisLock

pytestmark = pytest.mark.anyio


async def test_second_holder_is_refused_and_lock_is_released(redis_client: aioredis.Redis) -> None:
    first = RedisLock(redis_client, "{t}:lock:redis", ttl_ms=1000)
    second = RedisLock(redis_client, "{t}:lock:redis", ttl_ms=1000)
    async with first.held():
        with pytest.raises(LockBusy):
            async with second.held():
                pass
    async with second.held():
        assert await second.holder() == second.token


async def test_lock_is_renewed_past_its_ttl(redis_client: aioredis.Redis) -> None:
    lock = RedisLock(redis_client, "{t}:lock:long", ttl_ms=300)
    async with lock.held():
        await anyio.sleep(1.0)  # three times the TTL: only renewal keeps it
        assert await lock.holder() == lock.token
    assert await lock.holder() is None


async def test_losing_the_lock_stops_the_work(redis_client: aioredis.Redis) -> None:
    lock = RedisLock(redis_client, "{t}:lock:lost", ttl_ms=300)
    reached_end = False
    with anyio.fail_after(5), pytest.raises(LockLost):
        async with lock.held():
            await redis_client.set("{t}:lock:lost", "someone-else")  # taken over
            await anyio.sleep(3)
            reached_end = True
    assert not reached_end
    assert await redis_client.get("{t}:lock:lost") == b"someone-else", "not released: not ours"
