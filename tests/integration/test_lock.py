"""The Redis lock against a real redis-server: exclusive, renewed, lost → work stopped,
taken over from a dead process of this host."""

from __future__ import annotations

import sys

import anyio
import psutil
import pytest
import redis.asyncio as aioredis

from selfheal.bus.consumer import consumer_name
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


async def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_over(
    redis_client: aioredis.Redis,
) -> None:
    # A real process holds the lock, as a daemon killed inside a run would.
    child = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = consumer_name(psutil.Process(child.pid))
        await redis_client.set("{t}:lock:dead", f"{owner}/left", px=60_000)
        with pytest.raises(LockBusy):  # alive: its holding stands
            async with RedisLock(redis_client, "{t}:lock:dead").held():
                pass
    finally:
        child.kill()
        await child.wait()
    lock = RedisLock(redis_client, "{t}:lock:dead")
    async with lock.held():  # dead: taken over at once, not after the 60 s expiry
        assert await lock.holder() == lock.token
    assert await lock.holder() is None


@pytest.mark.parametrize(
    "holding",
    [
        "elsewhere.example:1:1.00/x",  # another host's daemon: only its expiry frees it
        "0123456789abcdef",  # a token naming no process
    ],
)
async def test_a_lock_whose_holder_cannot_be_judged_is_left_to_expire(
    redis_client: aioredis.Redis, holding: str
) -> None:
    await redis_client.set("{t}:lock:far", holding, px=60_000)
    assert not await RedisLock(redis_client, "{t}:lock:far").acquire()
    assert await redis_client.get("{t}:lock:far") == holding.encode()
