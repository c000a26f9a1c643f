"""PackedPipeline against a real redis-server: order, error replies, and a clean connection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, ResponseError

from selfheal.bus.pipelined import PackedPipeline
from tests.conftest import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["pool", "single connection"])
async def client(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[aioredis.Redis]:
    """A pooled client (the packed path) and a single-connection one (the ordinary path)."""
    made = aioredis.Redis(
        host="127.0.0.1",
        port=redis_server.port,
        single_connection_client=request.param == "single connection",
    )
    try:
        yield made
    finally:
        await made.aclose()


async def test_replies_come_in_order_and_each_command_sees_the_earlier_ones(
    client: aioredis.Redis,
) -> None:
    async with PackedPipeline(client) as pipe:
        for _ in range(50):
            await pipe.send("INCR", "counter")
        await pipe.send("SET", "text", "é" * 70_000)
        await pipe.send("STRLEN", "text")
        replies = await pipe.replies()
    assert replies == [*range(1, 51), b"OK", 140_000]


async def test_an_error_reply_takes_its_place_and_the_rest_still_run(
    client: aioredis.Redis,
) -> None:
    async with PackedPipeline(client) as pipe:
        await pipe.send("INCRBY", "a", 1)
        await pipe.send("INCR", "a", "extra")  # wrong number of arguments
        await pipe.send("EVALSHA", "0" * 40, 0)  # no such script
        await pipe.send("INCR", "a")
        first = await pipe.replies()
        await pipe.send("GET", "a")
        second = await pipe.replies()
    assert first[0] == 1
    assert isinstance(first[1], ResponseError) and "wrong number" in str(first[1])
    assert isinstance(first[2], NoScriptError)
    assert first[3] == 2
    assert second == [b"2"]
    assert await client.get("a") == b"2", "the connection is usable afterwards"


async def test_replies_left_unread_do_not_reach_the_next_user(client: aioredis.Redis) -> None:
    with pytest.raises(RuntimeError, match="planning failed"):
        async with PackedPipeline(client) as pipe:
            for index in range(20):
                await pipe.send("SET", f"k{index}", "value")
            raise RuntimeError("planning failed")
    # The written commands ran; the next command gets its own reply, not theirs.
    assert await client.echo("mine") == b"mine"
    assert await client.get("k19") == b"value"


async def test_nothing_sent_reads_nothing(client: aioredis.Redis) -> None:
    async with PackedPipeline(client) as pipe:
        assert await pipe.replies() == []
    assert await client.ping() is True


async def test_a_command_larger_than_the_socket_buffer_is_written_whole(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    drains: list[bytes] = []
    send = Connection.send_packed_command

    async def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        drains.append(command)
        await send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    big = "x" * (16 << 20)  # far more than a socket buffer: the write has to wait to drain
    async with PackedPipeline(redis_client) as pipe:  # a pooled client: the packed path
        await pipe.send("PING")  # connects (the handshake goes through send_packed_command)
        connecting = len(drains)
        await pipe.send("SET", "big", big)
        await pipe.send("STRLEN", "big")
        replies = await pipe.replies()
    assert replies == [b"PONG", b"OK", len(big)]
    assert drains[connecting:] == [b""], "only the big write waited to drain"
