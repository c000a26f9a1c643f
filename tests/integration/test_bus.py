"""The Redis Streams bus against a real redis-server: delivery, reclaim, timers, dead letters."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as aioredis

from selfheal.bus.consumer import ConsumerOptions, Delivery, Outcome, PoisonEvent, StreamConsumer
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.bus.timers import TimerPump
from selfheal.core.events import Event, new_event
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio

NAME = "test/thing.happened"
GROUP = "test-handler"
WAIT_S = 15.0


def now_ms() -> int:
    return int(time.time() * 1000)


def event(n: int, **kw: Any) -> Event:
    return new_event(NAME, {"n": n}, now_ms=now_ms(), **kw)


FAST = ConsumerOptions(
    batch=50, block_ms=100, reclaim_idle_ms=200, reclaim_every_s=0.1, max_deliveries=3
)


async def drain(consumer: StreamConsumer, until: Any, limit: float = WAIT_S) -> None:
    with anyio.fail_after(limit):
        while not until():
            await consumer.poll_once()


async def test_published_event_is_handled_once_and_acked(bus: Bus) -> None:
    seen: list[Event] = []

    async def handle(e: Event) -> None:
        seen.append(e)

    consumer = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST)
    await bus.ensure_group(NAME, GROUP)
    sent = event(1, traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert await bus.publish(sent)
    await drain(consumer, lambda: len(seen) == 1)
    assert seen[0] == sent
    pending = await bus.client.xpending(bus.keys.stream(NAME), GROUP)
    assert pending["pending"] == 0


def batch_consumer(
    bus: Bus,
    handle_batch: Any,
    *,
    batch: int,
    handled: list[int] | None = None,
    stopping: Any = lambda: False,
) -> StreamConsumer:
    """A consumer with a batch handler; the entries it leaves go to a handler noting `n`."""

    async def handle(e: Event) -> None:
        if handled is not None:
            handled.append(e.data["n"])

    options = ConsumerOptions(batch=batch, block_ms=100, reclaim_every_s=3600)
    return StreamConsumer(
        bus, NAME, GROUP, "c1", handle, options=options, stopping=stopping,
        batch_handler=handle_batch,
    )  # fmt: skip


async def test_full_batches_read_ahead_and_run_handles_the_read_ahead_before_it_stops(
    bus: Bus,
) -> None:
    batches: list[list[int]] = []
    handled: list[int] = []

    async def handle_batch(entries: list[Delivery]) -> list[Outcome]:
        batches.append([d.event.data["n"] for d in entries])
        # While this batch is handled, the consumer reads the next one ahead.
        await anyio.sleep(0.05)
        return [Outcome.SLOW] * len(entries)  # the per-entry path handles and acks them

    consumer = batch_consumer(
        bus, handle_batch, batch=2, handled=handled, stopping=lambda: len(batches) >= 1
    )
    await bus.ensure_group(NAME, GROUP)
    await bus.publish_many([event(n) for n in range(5)])
    with anyio.fail_after(WAIT_S):
        await consumer.run()
    # One poll, then stop: its read-ahead batch was handled, the fifth entry never read.
    assert batches == [[0, 1], [2, 3]]
    assert handled == [0, 1, 2, 3]
    stream = bus.keys.stream(NAME)
    assert (await bus.client.xpending(stream, GROUP))["pending"] == 0
    left = await bus.read_group(stream, GROUP, "c2", count=10, block_ms=None)
    assert [Event.from_wire(fields).data["n"] for _, fields in left] == [4]


async def test_a_short_batch_does_not_read_ahead(bus: Bus) -> None:
    batches: list[list[int]] = []

    async def handle_batch(entries: list[Delivery]) -> list[Outcome]:
        batches.append([d.event.data["n"] for d in entries])
        await bus.publish(event(9))  # arrives while the batch is handled
        return [Outcome.SLOW] * len(entries)

    consumer = batch_consumer(bus, handle_batch, batch=5)
    await bus.ensure_group(NAME, GROUP)
    await bus.publish_many([event(n) for n in range(2)])
    await consumer.poll_once()
    assert batches == [[0, 1]]
    # No read-ahead: the new entry is still undelivered, free for any member.
    pending = await bus.client.xpending(bus.keys.stream(NAME), GROUP)
    assert pending["pending"] == 0


@pytest.mark.parametrize(
    ("client_options", "blocking_pool"),
    [
        ({}, False),  # a pooled client: packed by hiredis, the raw reply
        ({"protocol": 3}, False),
        ({"single_connection_client": True}, False),  # redis-py's command path and parsing
        ({"single_connection_client": True, "protocol": 3}, False),
        ({"protocol": 3}, True),
    ],
)
async def test_read_group_gives_the_same_entries_for_every_client_shape(
    redis_server: RedisServer, client_options: dict[str, Any], blocking_pool: bool
) -> None:
    address = {"host": "127.0.0.1", "port": redis_server.port}
    if blocking_pool:
        pool = aioredis.BlockingConnectionPool(**address, **client_options)
        client = aioredis.Redis(connection_pool=pool)
    else:
        client = aioredis.Redis(**address, **client_options)
    try:
        bus = Bus(client, Keys("test"))
        await bus.ensure_group(NAME, GROUP)
        sent = [event(n) for n in range(3)]
        await bus.publish_many(sent)
        stream = bus.keys.stream(NAME)
        got = await bus.read_group(stream, GROUP, "c1", count=10, block_ms=None)
        assert [Event.from_wire(fields) for _, fields in got] == sent
        assert all(isinstance(entry_id, str) and "-" in entry_id for entry_id, _ in got)
        assert await bus.read_group(stream, GROUP, "c1", count=10, block_ms=50) == []
    finally:
        await client.aclose()


async def test_a_failed_read_ahead_does_not_disturb_the_batch_being_handled(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="selfheal.bus")
    handled: list[int] = []
    batches: list[list[int]] = []
    stream = bus.keys.stream(NAME)

    async def handle_batch(entries: list[Delivery]) -> list[Outcome]:
        batches.append([d.event.data["n"] for d in entries])
        if len(batches) == 1:
            # The stream is gone while the read-ahead runs: Redis answers it NOGROUP.
            await bus.client.rename(stream, stream + ":away")
            with anyio.fail_after(WAIT_S):
                while "read-ahead failed" not in caplog.text:  # noqa: ASYNC110 - bounded poll of the log
                    await anyio.sleep(0.01)
            await bus.client.rename(stream + ":away", stream)
        return [Outcome.SLOW] * len(entries)

    consumer = batch_consumer(bus, handle_batch, batch=2, handled=handled)
    await bus.ensure_group(NAME, GROUP)
    await bus.publish_many([event(n) for n in range(4)])
    await consumer.poll_once()
    assert batches == [[0, 1]] and handled == [0, 1]
    # The read-ahead failed: the next entries were never delivered, so none is pending.
    assert (await bus.client.xpending(stream, GROUP))["pending"] == 0
    await consumer.poll_once()
    assert batches == [[0, 1], [2, 3]] and handled == [0, 1, 2, 3]


async def test_dedupe_publishes_an_idempotency_key_once(bus: Bus) -> None:
    first = await bus.publish(event(1, idempotency_key="typesense@2026-11-27T03:00"), dedupe=True)
    second = await bus.publish(event(2, idempotency_key="typesense@2026-11-27T03:00"), dedupe=True)
    third = await bus.publish(event(3, idempotency_key="typesense@2026-11-28T03:00"), dedupe=True)
    assert first is not None and second is None and third is not None
    assert await bus.client.xlen(bus.keys.stream(NAME)) == 2


async def test_entry_of_a_dead_consumer_is_reclaimed_and_handled_once(bus: Bus) -> None:
    await bus.ensure_group(NAME, GROUP)
    await bus.publish(event(7))
    # A consumer reads the entry and dies before acking it.
    taken = await bus.client.xreadgroup(GROUP, "dead", {bus.keys.stream(NAME): ">"}, count=10)
    assert len(taken[0][1]) == 1

    seen: list[int] = []

    async def handle(e: Event) -> None:
        seen.append(e.data["n"])

    survivor = StreamConsumer(bus, NAME, GROUP, "alive", handle, options=FAST)
    await drain(survivor, lambda: seen == [7])
    assert survivor.stats.reclaimed == 1
    await survivor.poll_once()
    assert seen == [7], "handled once"
    assert (await bus.client.xpending(bus.keys.stream(NAME), GROUP))["pending"] == 0


async def test_two_daemons_share_a_group_and_handle_each_event_once(
    bus: Bus, redis_client: aioredis.Redis
) -> None:
    total = 300
    await bus.ensure_group(NAME, GROUP)
    handled_by: dict[int, list[str]] = {}

    def make(name: str) -> StreamConsumer:
        async def handle(e: Event) -> None:
            handled_by.setdefault(e.data["n"], []).append(name)
            await anyio.lowlevel.checkpoint()  # let the other member run

        return StreamConsumer(Bus(redis_client, bus.keys), NAME, GROUP, name, handle, options=FAST)

    a, b = make("daemon-a"), make("daemon-b")
    await bus.publish_many(event(n) for n in range(total))
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            for member in (a, b):
                tg.start_soon(drain, member, lambda: len(handled_by) == total)
    assert sorted(handled_by) == list(range(total))
    assert all(len(who) == 1 for who in handled_by.values()), "no event handled twice"
    assert {w for who in handled_by.values() for w in who} == {"daemon-a", "daemon-b"}


async def test_redelivered_event_already_done_is_acked_without_rerunning(bus: Bus) -> None:
    runs: list[str] = []

    async def handle(e: Event) -> None:
        runs.append(e.id)

    consumer = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST)
    await bus.ensure_group(NAME, GROUP)
    e = event(1)
    await bus.publish(e)
    await drain(consumer, lambda: len(runs) == 1)
    await bus.publish(e)  # the same event id arrives again (a producer retry)
    await drain(consumer, lambda: consumer.stats.duplicates == 1)
    assert runs == [e.id]


async def test_timers_survive_a_restart_and_fire_once_across_daemons(
    bus: Bus, redis_client: aioredis.Redis
) -> None:
    due = now_ms() + 400
    e = event(42)
    assert await bus.send_at(e, due) is True
    assert await bus.send_at(e, due) is False, "idempotent while pending"

    # "Restart": fresh Bus objects, two daemons pumping at once.
    pumps = [TimerPump(Bus(redis_client, bus.keys), max_sleep_s=0.05) for _ in range(2)]
    stream = bus.keys.stream(NAME)
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            for pump in pumps:
                tg.start_soon(pump.run)
            while await redis_client.xlen(stream) == 0:  # noqa: ASYNC110 - bounded poll of Redis
                await anyio.sleep(0.02)
            assert now_ms() >= due, "not before it is due"
            await anyio.sleep(0.3)  # give a second firing every chance to happen
            tg.cancel_scope.cancel()
    entries = await redis_client.xrange(stream)
    assert len(entries) == 1, "fired exactly once"
    assert sum(p.fired for p in pumps) == 1
    assert await redis_client.zcard(bus.keys.timers) == 0
    assert await redis_client.hlen(bus.keys.timer_payloads) == 0


async def test_undecodable_entry_goes_to_dead_letters(bus: Bus) -> None:
    async def handle(e: Event) -> None:
        raise AssertionError("must not be called")

    consumer = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST)
    await bus.ensure_group(NAME, GROUP)
    await bus.client.xadd(bus.keys.stream(NAME), {"garbage": "yes"})
    await drain(consumer, lambda: consumer.stats.dead_lettered == 1)
    [dead] = await bus.dead_letters()
    assert dead["group"] == GROUP and "undecodable" in dead["reason"]
    assert "garbage" in dead["fields"]
    assert (await bus.client.xpending(bus.keys.stream(NAME), GROUP))["pending"] == 0


@pytest.mark.parametrize("batched", [False, True])
async def test_entry_that_is_not_utf8_goes_to_dead_letters(bus: Bus, batched: bool) -> None:
    handled: list[Event] = []

    async def handle(e: Event) -> None:
        handled.append(e)

    async def handle_batch(entries: list[Delivery]) -> list[Outcome]:
        return [Outcome.SLOW] * len(entries)

    consumer = StreamConsumer(
        bus,
        NAME,
        GROUP,
        "c1",
        handle,
        options=FAST,
        batch_handler=handle_batch if batched else None,
    )
    await bus.ensure_group(NAME, GROUP)
    good = event(1).to_wire()
    await bus.client.xadd(bus.keys.stream(NAME), {**good, "data": b'{"n": "\xff"}'})
    await bus.client.xadd(bus.keys.stream(NAME), {b"\xfe": b"x"})
    await bus.publish(event(2))
    await drain(consumer, lambda: consumer.stats.dead_lettered == 2 and len(handled) == 1)
    assert [e.data for e in handled] == [{"n": 2}]
    dead = await bus.dead_letters()
    assert all("not valid UTF-8" in d["reason"] for d in dead), dead
    # The dead letter keeps the bytes readable: invalid ones escaped, never dropped.
    assert any("\\\\xff" in d["fields"] for d in dead), dead
    assert (await bus.client.xpending(bus.keys.stream(NAME), GROUP))["pending"] == 0


async def test_poison_event_is_dead_lettered_with_the_reason(bus: Bus) -> None:
    async def handle(e: Event) -> None:
        raise PoisonEvent("retryPolicy.sleepMinMs: must be >= 1")

    consumer = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST)
    await bus.ensure_group(NAME, GROUP)
    await bus.publish(event(1))
    await drain(consumer, lambda: consumer.stats.dead_lettered == 1)
    [dead] = await bus.dead_letters()
    assert "retryPolicy.sleepMinMs" in dead["reason"]


async def test_failing_handler_is_retried_then_dead_lettered_with_last_error(bus: Bus) -> None:
    attempts: list[int] = []

    async def handle(e: Event) -> None:
        attempts.append(1)
        raise OSError(f"disk on fire #{len(attempts)}")

    buried: list[tuple[str, str]] = []

    async def told(e: Event, reason: str) -> None:
        buried.append((e.id, reason))

    consumer = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST, on_buried=told)
    await bus.ensure_group(NAME, GROUP)
    sent = event(1)
    await bus.publish(sent)
    await drain(consumer, lambda: consumer.stats.dead_lettered == 1)
    assert len(attempts) == FAST.max_deliveries
    [dead] = await bus.dead_letters()
    assert f"disk on fire #{FAST.max_deliveries}" in dead["reason"]
    assert buried == [(sent.id, dead["reason"])]  # the owner hears of it, with the reason
    assert int(dead["deliveries"]) == FAST.max_deliveries + 1
    assert (await bus.client.xpending(bus.keys.stream(NAME), GROUP))["pending"] == 0


async def test_streams_are_trimmed(redis_client: aioredis.Redis) -> None:
    small = Bus(redis_client, Keys("trim"), maxlen=100)
    await small.publish_many(event(n) for n in range(2000))
    length = await redis_client.xlen(small.keys.stream(NAME))
    assert 100 <= length < 2000 // 2


async def test_stats_report_lengths_pending_dead_letters_and_timers(bus: Bus) -> None:
    await bus.ensure_group(NAME, GROUP)
    await bus.publish_many(event(n) for n in range(5))
    await bus.client.xreadgroup(GROUP, "c", {bus.keys.stream(NAME): ">"}, count=2)
    await bus.send_after(event(99), 60_000)
    await bus.client.xadd(bus.keys.dead_letters, {"reason": "x"})
    stats = await bus.stats()
    [row] = [s for s in stats["streams"] if s["event"] == NAME]
    assert row["length"] == 5
    [group] = row["groups"]
    assert group["group"] == GROUP and group["pending"] == 2
    assert stats["deadLetters"] == 1
    assert stats["timers"] == {"scheduled": 1, "due": 0}


SLOW_RECLAIM = ConsumerOptions(
    batch=50, block_ms=100, reclaim_idle_ms=3_600_000, reclaim_every_s=3600, max_deliveries=5
)


async def _strand(bus: Bus, consumer: str, n: int) -> None:
    """Publish one event and deliver it to `consumer` without acking (a crash mid-handling)."""
    await bus.ensure_group(NAME, GROUP)
    assert await bus.publish(event(n))
    got = await bus.read_group(bus.keys.stream(NAME), GROUP, consumer, count=10, block_ms=None)
    assert [f for _, f in got], "the event was delivered to the crashed consumer"


def _noting(seen: list[int], want: list[int], done: anyio.Event) -> Any:
    async def handle(e: Event) -> None:
        seen.append(e.data["n"])
        if sorted(seen) == want:
            done.set()

    return handle


async def _run_until(consumer: StreamConsumer, done: anyio.Event) -> None:
    """Run the consumer (made with stopping=done.is_set) until it has stopped."""
    with anyio.fail_after(WAIT_S):
        await consumer.run()


async def test_restarted_consumer_handles_its_own_pending_entries_at_once(bus: Bus) -> None:
    await _strand(bus, "me", 1)
    seen: list[int] = []
    done = anyio.Event()
    # The reclaim would wait an hour: only the take-over at start can deliver it.
    consumer = StreamConsumer(
        bus, NAME, GROUP, "me", _noting(seen, [1], done), options=SLOW_RECLAIM, stopping=done.is_set
    )
    await _run_until(consumer, done)
    pending = await bus.client.xpending(bus.keys.stream(NAME), GROUP)
    assert pending["pending"] == 0
    assert consumer.stats.reclaimed == 1


async def test_dead_local_consumers_entries_are_taken_over_live_ones_left(bus: Bus) -> None:
    import socket

    import psutil

    dead_pid = max(psutil.pids()) + 100_000
    dead = f"{socket.gethostname()}:{dead_pid}"
    live = f"{socket.gethostname()}:{os.getpid()}"  # this process: alive
    remote = f"another-host.example:{dead_pid}"  # may be alive there: not ours to judge
    await _strand(bus, dead, 1)
    await _strand(bus, live, 2)
    await _strand(bus, remote, 3)
    seen: list[int] = []
    done = anyio.Event()
    consumer = StreamConsumer(
        bus,
        NAME,
        GROUP,
        "new",
        _noting(seen, [1], done),
        options=SLOW_RECLAIM,
        stopping=done.is_set,
    )
    await _run_until(consumer, done)
    names = {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"]): c["pending"]
        for c in await bus.client.xinfo_consumers(bus.keys.stream(NAME), GROUP)
    }
    assert dead not in names, "the dead consumer is removed once its entries are taken over"
    assert names[live] == 1 and names[remote] == 1


async def test_a_requeued_dead_letter_is_handled_again_by_the_group_that_failed(
    bus: Bus,
) -> None:
    fixed = False
    handled: list[int] = []
    others: list[int] = []

    async def handle(e: Event) -> None:
        if not fixed:
            raise PoisonEvent("needs an operator")
        handled.append(e.data["n"])

    async def other(e: Event) -> None:
        others.append(e.data["n"])

    failing = StreamConsumer(bus, NAME, GROUP, "c1", handle, options=FAST)
    fine = StreamConsumer(bus, NAME, "other-group", "c1", other, options=FAST)
    await bus.ensure_group(NAME, GROUP)
    await bus.ensure_group(NAME, "other-group")
    await bus.publish(event(7))
    await drain(failing, lambda: failing.stats.dead_lettered == 1)
    await drain(fine, lambda: others == [7])
    [dead] = await bus.dead_letters()

    fixed = True
    done = await bus.requeue(dead["id"])
    assert done["stream"] == bus.keys.stream(NAME) and await bus.dead_letters() == []
    await drain(failing, lambda: handled == [7])
    await drain(fine, lambda: fine.stats.duplicates == 1)  # handled before: skipped
    assert others == [7]
    with pytest.raises(LookupError):
        await bus.requeue(dead["id"])  # once only


async def test_a_dead_letter_that_is_not_an_entry_is_not_requeued(bus: Bus) -> None:
    bad = await bus.client.xadd(
        bus.keys.dead_letters, {"stream": bus.keys.stream(NAME), "fields": "[1, 2]"}
    )
    outside = await bus.client.xadd(bus.keys.dead_letters, {"stream": "elsewhere", "fields": "{}"})
    for entry in (bad, outside):
        with pytest.raises(ValueError):
            await bus.requeue(entry.decode())
    assert len(await bus.dead_letters()) == 2  # left as they were


async def test_groups_of_names_the_groups_reading_an_event(bus: Bus) -> None:
    assert await bus.groups_of(NAME) == []  # no stream yet
    await bus.ensure_group(NAME, GROUP)
    await bus.ensure_group(NAME, "second-handler")
    assert sorted(await bus.groups_of(NAME)) == sorted([GROUP, "second-handler"])
    await bus.client.set(bus.keys.stream("test/not.a.stream"), "x")
    assert await bus.groups_of("test/not.a.stream") == []  # some other key: nobody reads it
