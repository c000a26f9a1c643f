"""A consumer group member: at-least-once delivery with idempotent, acked-after-effect handling.

Each entry is handled, then marked done and acked in one step. A handler that
raises leaves the entry pending; after `reclaim_idle_ms` any member of the group
(this daemon or another) claims it with XAUTOCLAIM and tries again, and after
`max_deliveries` it goes to the dead-letter stream with the last error. Entries
that cannot be decoded, and events the handler rejects as `PoisonEvent`, go
there at once. Nothing is dropped silently.

With a `batch_handler`, freshly read entries are offered to it as one batch; it
reports per entry whether it made the effect durable and acked it itself, found
it already done (and acked it), or leaves it to the ordinary per-entry path.
While a full batch is handled (a backlog), the next one is read ahead without
blocking, so the read's round trip overlaps the handling; a read-ahead batch is
handled by the next poll, and `run` handles it before it returns (if cancelled,
the entries stay pending and are reclaimed like those of a dead consumer).
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import anyio
import psutil
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from selfheal.bus.streams import Bus, NotUtf8Fields, as_text, cast_entries
from selfheal.core.events import Envelope, Event, EventDecodeError
from selfheal.redact import redact_text

log = logging.getLogger("selfheal.bus")

Handler = Callable[[Event], Awaitable[None]]


# How long a daemon's idle consumer waits in one read (a stop ends the wait), and so
# how often it looks for entries to reclaim (more often when they may be reclaimed
# sooner than twice this: see ConsumerOptions.reclaim_every_s).
IDLE_READ_MS = 10_000


def _started(process: psutil.Process) -> str:
    """When a process started, as a name part (centiseconds, as the kernel counts)."""
    return f"{process.create_time():.2f}"


def consumer_name(process: psutil.Process) -> str:
    """The consumer name a daemon process of this host reads under: host, pid and start
    time, so a restart can tell its own (and a dead local process's) entries from those
    of live daemons elsewhere, even once the pid has been given to another process."""
    return f"{socket.gethostname()}:{process.pid}:{_started(process)}"


def local_consumer_name() -> str:
    """This process's consumer name (see consumer_name)."""
    return consumer_name(psutil.Process())


def is_dead_local(consumer: str) -> bool:
    """True for a consumer name of this host whose process no longer runs: its pid is
    gone or a zombie, or now belongs to a process started at another time.

    Names without a start time (older daemons) count as dead only when the pid is gone.
    """
    parts = consumer.rsplit(":", 2)
    started: str | None = None
    if len(parts) == 3 and parts[1].isdigit():
        host, pid, started = parts
    else:
        host, _, pid = consumer.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return True
        return started is not None and _started(process) != started
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False  # not ours to judge (no access): the ordinary reclaim sees to it


class Outcome(StrEnum):
    """What a batch handler did with one entry."""

    ACKED = "acked"  # effect, done marker and ack were written together
    DUPLICATE = "duplicate"  # handled before (done marker set); acked again
    SLOW = "slow"  # not handled: run it through the per-entry path


class Delivery:
    """One fresh entry offered to a batch handler: its envelope checked, its event decoded
    when first asked for.

    The consumer dead-letters entries whose fields are not an event's before the batch
    handler sees them. The data comes unparsed: a handler that reads the data text
    itself (the router validates a request straight from it) need not pay for the
    event, and one that asks for `event` gets EventDecodeError if the data is not an
    event's (then it answers SLOW and the per-entry path buries it).
    """

    __slots__ = ("_event", "entry_id", "envelope", "fields")

    def __init__(
        self, entry_id: str, fields: dict[str, str], envelope: Envelope, event: Event | None
    ) -> None:
        self.entry_id = entry_id
        self.fields = fields  # the wire fields
        self.envelope = envelope
        self._event = event

    @property
    def event(self) -> Event:
        """The entry's event; raises EventDecodeError if it is not one."""
        if self._event is None:
            self._event = Event.from_wire(self.fields)
        return self._event

    @property
    def decoded(self) -> Event | None:
        """The event if it was decoded already."""
        return self._event


def delivery_of(entry_id: str, fields: dict[str, str]) -> Delivery | str:
    """A fresh entry for a batch handler, or why it is not an event (a dead letter's reason)."""
    envelope = _decoded(Envelope.from_wire, fields)
    if isinstance(envelope, str):
        return envelope
    return Delivery(entry_id, fields, envelope, None)


BatchHandler = Callable[[list[Delivery]], Awaitable[list[Outcome]]]


class PoisonEvent(Exception):
    """The handler rejects this event for good (e.g. its payload fails validation)."""


@dataclass
class ConsumerStats:
    """Counters shown in status."""

    handled: int = 0
    duplicates: int = 0
    failed: int = 0
    reclaimed: int = 0
    dead_lettered: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class ConsumerOptions:
    """Delivery knobs for one consumer."""

    batch: int = 100
    # How long one read waits for entries. Without `wait_stopping` it also bounds how
    # long a stop waits for an idle consumer; with it, a stop ends the wait at once.
    block_ms: int = 1000
    reclaim_idle_ms: int = 60_000
    # Seconds between looks for entries to reclaim (twice per `reclaim_idle_ms` when
    # that is sooner); a read ends when a look is due, so a dead member's entries are
    # taken over soon after they have been idle `reclaim_idle_ms`, however quiet the
    # stream.
    reclaim_every_s: float = 5.0
    max_deliveries: int = 5
    # Entries of one batch handled at once; their Redis round trips overlap. Handlers
    # must tolerate it (the router's per-incident updates are optimistic-locked).
    concurrency: int = 1


class StreamConsumer:
    """Service: consumes one event stream as one member of one group."""

    def __init__(
        self,
        bus: Bus,
        event_name: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        options: ConsumerOptions | None = None,
        stopping: Callable[[], bool] = lambda: False,
        wait_stopping: Callable[[], Awaitable[None]] | None = None,
        batch_handler: BatchHandler | None = None,
        on_buried: Callable[[Event, str], Awaitable[None]] | None = None,
    ) -> None:
        self.bus = bus
        self.event_name = event_name
        self.group = group
        self.consumer = consumer
        self.name = f"consumer:{group}"
        self._handler = handler
        self._batch_handler = batch_handler
        # Told of every event this consumer dead-letters (with the reason), so work that
        # gave up is raised where someone sees it rather than only logged.
        self._on_buried = on_buried
        self.options = options or ConsumerOptions()
        self._stopping = stopping
        self._wait_stopping = wait_stopping
        self._read_scope: anyio.CancelScope | None = None
        self.stats = ConsumerStats()
        self._stream = bus.keys.stream(event_name)
        self._next_reclaim = 0.0
        options = self.options
        self._reclaim_every_s = min(options.reclaim_every_s, options.reclaim_idle_ms / 2000)
        self._read_ahead: list[tuple[str, dict[str, str]]] = []

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the group, signal readiness, then consume until stopped."""
        await self.bus.ensure_group(self.event_name, self.group)
        task_status.started()
        await self.take_over_stranded()
        async with anyio.create_task_group() as tg:
            if self._wait_stopping is not None:
                tg.start_soon(self._end_read_when_stopping)
            while not self._stopping():
                await self.poll_once()
            tg.cancel_scope.cancel()
        # Entries read ahead are delivered to us: handle them rather than leave them
        # pending until a reclaim finds them (cancelled, we do leave them to it).
        await self._handle_read_ahead()

    async def poll_once(self) -> int:
        """Reclaim stale entries when due, then read and handle one batch."""
        handled = 0
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self._reclaim_every_s
            handled += await self._reclaim()
        batch, self._read_ahead = self._read_ahead, []
        if not batch:
            until_reclaim = math.ceil((self._next_reclaim - time.monotonic()) * 1000)
            batch = await self._read(max(1, min(self.options.block_ms, until_reclaim)))
        if self._batch_handler is not None and batch:
            async with anyio.create_task_group() as tg:
                if len(batch) >= self.options.batch:  # a backlog: read the next one meanwhile
                    tg.start_soon(self._read_next)
                await self._handle_batch(self._batch_handler, batch)
        else:
            await self._handle_each([(entry_id, fields, None) for entry_id, fields in batch])
        return handled + len(batch)

    async def _read(self, block_ms: int | None) -> list[tuple[str, dict[str, str]]]:
        if block_ms is None:
            return await self.bus.read_group(
                self._stream, self.group, self.consumer, count=self.options.batch, block_ms=None
            )
        # A waiting read ends when the daemon stops. Entries Redis delivered just then
        # stay pending on this consumer and are taken over at the next start.
        if self._stopping():
            return []  # no await since the check: the stop cannot slip in unseen
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            try:
                return await self.bus.read_group(
                    self._stream,
                    self.group,
                    self.consumer,
                    count=self.options.batch,
                    block_ms=block_ms,
                )
            finally:
                self._read_scope = None
        return []

    async def _end_read_when_stopping(self) -> None:
        assert self._wait_stopping is not None
        await self._wait_stopping()
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _read_next(self) -> None:
        try:
            self._read_ahead = await self._read(None)
        except Exception as exc:  # only a head start: the next ordinary read reports it
            log.debug("%s read-ahead failed: %s", self.group, exc)

    async def _handle_read_ahead(self) -> None:
        batch, self._read_ahead = self._read_ahead, []
        if batch and self._batch_handler is not None:
            await self._handle_batch(self._batch_handler, batch)

    async def _handle_each(self, items: list[tuple[str, dict[str, str], Event | None]]) -> None:
        """The per-entry path for fresh entries, `concurrency` at a time."""
        if self.options.concurrency > 1 and len(items) > 1:
            limiter = anyio.CapacityLimiter(self.options.concurrency)

            async def limited(entry_id: str, fields: dict[str, str], event: Event | None) -> None:
                async with limiter:
                    await self._handle(entry_id, fields, deliveries=1, event=event)

            async with anyio.create_task_group() as tg:
                for entry_id, fields, event in items:
                    tg.start_soon(limited, entry_id, fields, event)
        else:
            for entry_id, fields, event in items:
                await self._handle(entry_id, fields, deliveries=1, event=event)

    async def _handle_batch(
        self, handler: BatchHandler, batch: list[tuple[str, dict[str, str]]]
    ) -> None:
        decoded: list[Delivery] = []
        for entry_id, fields in batch:
            delivery = delivery_of(entry_id, fields)
            if isinstance(delivery, str):
                await self._bury(entry_id, fields, delivery, deliveries=1)
                continue
            decoded.append(delivery)
        if not decoded:
            return
        try:
            outcomes = await handler(decoded)
            if len(outcomes) != len(decoded):
                raise RuntimeError(f"{len(outcomes)} outcomes for {len(decoded)} entries")
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            raise  # the bus itself is down: let the supervisor restart us with backoff
        except Exception as exc:
            # Whatever the batch wrote is idempotent or marked done: the slow path redoes it.
            log.warning("%s batch handler failed, handling one by one: %s", self.group, exc)
            outcomes = [Outcome.SLOW] * len(decoded)
        slow: list[tuple[str, dict[str, str], Event | None]] = []
        for delivery, outcome in zip(decoded, outcomes, strict=True):
            if outcome == Outcome.ACKED:
                self.stats.handled += 1
            elif outcome == Outcome.DUPLICATE:
                self.stats.duplicates += 1
            else:
                slow.append((delivery.entry_id, delivery.fields, delivery.decoded))
        await self._handle_each(slow)

    async def _reclaim(self) -> int:
        client = self.bus.client
        start = "0-0"
        count = 0
        while True:
            reply = await client.xautoclaim(
                self._stream,
                self.group,
                self.consumer,
                min_idle_time=self.options.reclaim_idle_ms,
                start_id=start,
                count=self.options.batch,
            )
            start = as_text(reply[0])
            entries = cast_entries(reply[1])
            if entries:
                deliveries = await self._delivery_counts([e for e, _ in entries])
                for entry_id, fields in entries:
                    self.stats.reclaimed += 1
                    await self._handle(entry_id, fields, deliveries=deliveries.get(entry_id, 1))
                    count += 1
            if start == "0-0" or not entries:
                return count

    async def take_over_stranded(self) -> int:
        """Handle now what a crash left pending on this consumer or on a dead local one.

        After the service restarts (same consumer name), or the daemon does (a dead
        pid of this host), those entries are nobody's: waiting `reclaim_idle_ms`
        for them would only delay their effects. Entries of live consumers, here or
        on other hosts, are left to the ordinary reclaim.
        """
        client = self.bus.client
        owners = [self.consumer]
        infos: list[dict[str, Any]] = await client.xinfo_consumers(self._stream, self.group)
        for info in infos:
            name = as_text(info["name"])
            if name != self.consumer and is_dead_local(name):
                owners.append(name)
        count = 0
        for owner in owners:
            after = "-"
            while True:
                pending: list[dict[str, Any]] = await client.xpending_range(
                    self._stream, self.group, min=after, max="+",
                    count=self.options.batch, consumername=owner,
                )  # fmt: skip
                if not pending:
                    break
                ids: list[Any] = [as_text(item["message_id"]) for item in pending]
                after = "(" + ids[-1]
                claimed = cast_entries(
                    await client.xclaim(
                        self._stream, self.group, self.consumer, min_idle_time=0, message_ids=ids
                    )
                )
                deliveries = await self._delivery_counts(ids)
                for entry_id, fields in claimed:
                    self.stats.reclaimed += 1
                    await self._handle(entry_id, fields, deliveries=deliveries.get(entry_id, 1))
                    count += 1
            if owner != self.consumer:
                await client.xgroup_delconsumer(self._stream, self.group, owner)
        if count:
            log.info("%s: handled %d entries left pending by a crash", self.group, count)
        return count

    async def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        pending = await self.bus.client.xpending_range(
            self._stream, self.group, min=entry_ids[0], max=entry_ids[-1], count=len(entry_ids) * 2
        )
        counts: dict[str, int] = {}
        for item in pending:
            message_id = item["message_id"]
            key = message_id.decode() if isinstance(message_id, bytes) else str(message_id)
            counts[key] = int(item["times_delivered"])
        return counts

    async def _decode(
        self, entry_id: str, fields: dict[str, str], *, deliveries: int
    ) -> Event | None:
        """The entry's event, or None once an undecodable entry is dead-lettered."""
        event = _event_of(fields)
        if isinstance(event, str):
            await self._bury(entry_id, fields, event, deliveries)
            return None
        return event

    async def _handle(
        self,
        entry_id: str,
        fields: dict[str, str],
        *,
        deliveries: int,
        event: Event | None = None,
    ) -> None:
        if event is None:
            event = await self._decode(entry_id, fields, deliveries=deliveries)
            if event is None:
                return
        if deliveries > self.options.max_deliveries:
            last = await self.bus.last_failure(self.group, entry_id) or "not recorded"
            reason = f"gave up after {deliveries - 1} deliveries; last error: {last}"
            await self._bury(entry_id, fields, reason, deliveries, event)
            return
        if await self.bus.already_done(self.group, event.id):
            # Handled before, but the ack was lost: ack again, do nothing else.
            self.stats.duplicates += 1
            await self.bus.complete(self.event_name, self.group, entry_id, event.id)
            return
        try:
            await self._handler(event)
        except PoisonEvent as exc:
            await self._bury(entry_id, fields, f"rejected: {exc}", deliveries, event)
            return
        except (aioredis.ConnectionError, aioredis.TimeoutError):
            raise  # the bus itself is down: let the supervisor restart us with backoff
        except Exception as exc:  # stays pending; reclaimed and retried later
            message = redact_text(f"{type(exc).__name__}: {exc}")
            self.stats.failed += 1
            self.stats.last_error = message
            await self.bus.record_failure(self.group, entry_id, message)
            log.warning(
                "%s failed on %s (%s, delivery %d): %s",
                self.group,
                self.event_name,
                event.id,
                deliveries,
                message,
            )
            return
        await self.bus.complete(self.event_name, self.group, entry_id, event.id)
        self.stats.handled += 1

    async def _bury(
        self,
        entry_id: str,
        fields: dict[str, str],
        reason: str,
        deliveries: int,
        event: Event | None = None,
    ) -> None:
        self.stats.dead_lettered += 1
        log.error("%s dead-lettered %s entry %s: %s", self.group, self.event_name, entry_id, reason)
        await self.bus.dead_letter(
            self.event_name,
            self.group,
            entry_id,
            fields,
            reason=redact_text(reason),
            deliveries=deliveries,
        )
        if event is not None and self._on_buried is not None:
            await self._on_buried(event, redact_text(reason))


def _event_of(fields: dict[str, str]) -> Event | str:
    """The entry's event, or why it is not one (the dead letter's reason)."""
    return _decoded(Event.from_wire, fields)


_Decoded = TypeVar("_Decoded", Envelope, Event)


def _decoded(
    decode: Callable[[dict[str, str]], _Decoded], fields: dict[str, str]
) -> _Decoded | str:
    """decode(fields), or why the entry is not an event (the dead letter's reason)."""
    if not fields:
        return "entry was trimmed from the stream"
    if isinstance(fields, NotUtf8Fields):
        return f"undecodable event: {', '.join(fields.invalid)}: not valid UTF-8"
    try:
        return decode(fields)
    except EventDecodeError as exc:
        return f"undecodable event: {exc}"
