"""The COMMIT script against a real redis-server: what a group writes arrives byte for byte."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from selfheal.bus.streams import Bus
from selfheal.healing.commit import COMMIT, CommitBatch, Group, statuses

pytestmark = pytest.mark.anyio

# Lengths on both sides of each MessagePack string header (fixstr, str8, str16, str32),
# and text that is not ASCII.
TEXTS = [
    "",
    "a" * 31,
    "b" * 32,
    "c" * 255,
    "d" * 256,
    "e" * 65_535,
    "f" * 65_536,
    "é✓😀\x00\n" * 40,
]


async def commit(bus: Bus, *groups: Group) -> list[int]:
    batch = CommitBatch(bus.maxlen)
    for group in groups:
        batch.add(group)
    script = bus.client.register_script(COMMIT)
    return statuses(await bus.eval_packed(script, batch.keys, batch.argv()))


async def test_text_of_every_length_and_script_is_written_as_it_was_given(
    bus: Bus, redis_client: aioredis.Redis
) -> None:
    group = Group()
    group.expect_version("{t}:incident", 0)
    group.hset("{t}:incident", {f"f{i}": text for i, text in enumerate(TEXTS)})
    group.set("{t}:decision", TEXTS[-1], 60)
    group.xadd("{t}:stream", {"data": TEXTS[5]}, "{t}:index")
    group.zadd("{t}:zset", 1_900_000_000_123, "member")
    assert await commit(bus, group) == [1]
    stored = await redis_client.hgetall("{t}:incident")
    assert {key.decode(): value.decode() for key, value in stored.items()} == {
        f"f{i}": text for i, text in enumerate(TEXTS)
    }
    assert (await redis_client.get("{t}:decision")).decode() == TEXTS[-1]
    assert 0 < await redis_client.ttl("{t}:decision") <= 60
    [(_, fields)] = await redis_client.xrange("{t}:stream")
    assert fields == {b"data": TEXTS[5].encode()}
    assert await redis_client.smembers("{t}:index") == {b"{t}:stream"}
    # A millisecond timestamp as a score keeps every digit.
    assert await redis_client.zscore("{t}:zset", "member") == 1_900_000_000_123


async def test_a_group_whose_guard_fails_writes_nothing_and_the_next_one_applies(
    bus: Bus, redis_client: aioredis.Redis
) -> None:
    await redis_client.hset("{t}:moved", "version", "3")
    await redis_client.set("{t}:stored", "x")
    moved, stored, fine = Group(), Group(), Group()
    moved.expect_version("{t}:moved", 2)
    moved.set("{t}:a", "1", 60)
    stored.expect_version("{t}:other", 0)
    stored.expect_absent("{t}:stored")
    stored.set("{t}:b", "1", 60)
    fine.expect_version("{t}:moved", 3)
    fine.set("{t}:c", "1", 60)
    assert await commit(bus, moved, stored, fine) == [0, -1, 1]
    assert await redis_client.exists("{t}:a", "{t}:b") == 0
    assert await redis_client.get("{t}:c") == b"1"
