"""The durable event bus on Redis Streams: publish, delayed delivery, dead letters, stats.

One stream per event name and one consumer group per consuming function (see
`bus/consumer.py`). Writes that must happen together run as one Lua script, so
a crash between two commands can never lose or double an event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import anyio
import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from selfheal.bus.keys import DONE_TTL_S, PUBLISHED_TTL_S, Keys
from selfheal.core.events import Event, text_json
from selfheal.errors import SelfhealError

# Publish one event; with dedupe, only if its idempotency key was never published.
# A duplicate rewrites the marker as it is: that write is what a WAIT after the call
# waits for, and the replica that has it has the first publish too.
# KEYS: stream, streams index, published marker. ARGV: maxlen, ttl, dedupe, fields...
_PUBLISH = """
if ARGV[3] == '1' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('SET', KEYS[3], '1', 'KEEPTTL')
    return false
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
redis.call('SADD', KEYS[2], KEYS[1])
return id
"""

# Schedule an event for later; idempotent on the event id while it is pending.
# KEYS: timers, payloads. ARGV: event id, due ms, payload JSON.
_SCHEDULE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  return 1
end
return 0
"""

# Move every due timer into its stream, atomically, so one daemon fires it once.
# The target stream is read from the payload; it shares the hash tag with KEYS.
# KEYS: timers, payloads, streams index. ARGV: limit, maxlen.
_MOVE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], id)
  if payload then
    local p = cjson.decode(payload)
    local args = {}
    for k, v in pairs(p.fields) do
      args[#args + 1] = k
      args[#args + 1] = v
    end
    redis.call('XADD', p.stream, 'MAXLEN', '~', ARGV[2], '*', unpack(args))
    redis.call('SADD', KEYS[3], p.stream)
  end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, now, nxt[2] or false}
"""

# Move an entry to the dead-letter stream and ack it, in one step.
# KEYS: dead stream, source stream, last-failure key. ARGV: group, entry id, maxlen, fields...
_DEAD_LETTER = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
redis.call('DEL', KEYS[3])
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
"""

# Put a dead letter's entry back on its stream, once: the XDEL that takes the dead
# letter out is what lets the XADD happen (a second requeue finds nothing).
# KEYS: dead-letter stream, the entry's stream. ARGV: dead letter id, maxlen, fields...
_REQUEUE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""

# Record that a group handled an event, and ack it, in one step.
# KEYS: stream, done marker, last-failure key. ARGV: group, entry id, ttl.
_COMPLETE = """
redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
redis.call('DEL', KEYS[3])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

# The names of a stream's consumer groups ({} when there is no stream). A script so that
# a cluster client routes it by its key alone: sent as XINFO GROUPS, redis-py's cluster
# client first asks a node which argument is the key (COMMAND GETKEYS), an extra round
# trip that also fails with an IndexError while the client re-reads the cluster.
# KEYS: stream.
_GROUP_NAMES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local names = {}
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  names[#names + 1] = group[2]
end
return names
"""


class NotReplicated(SelfhealError):
    """A write reached fewer replicas than asked for within the wait: a failover now
    could lose it (it may as well survive; a resend with the same idempotency key is
    not doubled)."""

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"held by {confirmed} of the {wanted} replicas asked for after {timeout_ms} ms"
        )
        self.confirmed = confirmed
        self.wanted = wanted


@dataclass(frozen=True)
class Replication:
    """How many replicas must confirm a write (Redis WAIT) before it counts as done."""

    replicas: int = 0
    timeout_ms: int = 1000


@dataclass(frozen=True)
class TimerSweep:
    """What one pass of the timer mover did."""

    moved: int
    now_ms: int
    next_due_ms: int | None


def timer_payload(stream: str, fields: dict[str, str]) -> str:
    """What a delayed event waits as: its stream and wire fields (the mover script reads it)."""
    return text_json({"stream": stream, "fields": fields})


def as_text(value: bytes | str) -> str:
    """A Redis reply value as text."""
    return value.decode() if isinstance(value, bytes) else value


# Pools whose connections take a command packed by hiredis: the plain one, and the
# Sentinel one (its connections find the master themselves when they connect).
_PACKABLE_POOLS: Final = (ConnectionPool, SentinelConnectionPool)
# A blocking command sent the ordinary way (a cluster) must be answered within the
# client's read timeout: it waits in Redis this much less than that timeout.
BLOCK_MARGIN_S: Final = 1.0


def packed_pool(client: aioredis.Redis) -> ConnectionPool | None:
    """The client's connection pool, on whose connections a command packed by hiredis
    can be sent; None for a single-connection client or a cluster."""
    pool = getattr(client, "connection_pool", None)
    if getattr(client, "connection", None) is not None or type(pool) not in _PACKABLE_POOLS:
        return None
    return cast(ConnectionPool, pool)


def read_timeout_s(client: aioredis.Redis) -> float | None:
    """The client's socket (read) timeout in seconds; None when it has none."""
    timeout = client.get_connection_kwargs().get("socket_timeout")  # type: ignore[no-untyped-call]
    return None if timeout is None else float(timeout)


def capped_block_ms(client: aioredis.Redis, block_ms: int) -> int:
    """How long a blocking command the client sends the ordinary way may wait in Redis:
    `block_ms`, or less so that the reply comes before the client's read timeout.

    Such a client (a cluster) reads every reply within its socket timeout (redis-py's
    default is 5 s); a BLOCK longer than that would be taken for a dead server. A
    shorter wait only makes an idle consumer read again sooner.
    """
    timeout = read_timeout_s(client)
    if timeout is None or block_ms <= 0:
        return block_ms
    return max(1, min(block_ms, int((timeout - min(BLOCK_MARGIN_S, timeout / 2)) * 1000)))


class Bus:
    """Publish, schedule and inspect events in one namespace."""

    def __init__(self, client: aioredis.Redis, keys: Keys, *, maxlen: int = 100_000) -> None:
        self.client = client
        self.keys = keys
        self.maxlen = maxlen
        self._publish: AsyncScript = client.register_script(_PUBLISH)
        self._schedule: AsyncScript = client.register_script(_SCHEDULE)
        self._move_due: AsyncScript = client.register_script(_MOVE_DUE)
        self._dead_letter: AsyncScript = client.register_script(_DEAD_LETTER)
        self._complete: AsyncScript = client.register_script(_COMPLETE)
        self._requeue: AsyncScript = client.register_script(_REQUEUE)
        self._group_names: AsyncScript = client.register_script(_GROUP_NAMES)

    # -- publishing ------------------------------------------------------------------

    def _publish_args(self, event: Event, dedupe: bool) -> tuple[list[str], list[Any]]:
        fields = event.to_wire()
        keys = [
            self.keys.stream(event.name),
            self.keys.streams_index,
            self.keys.published(event.name, event.idempotency_key),
        ]
        args: list[Any] = [self.maxlen, PUBLISHED_TTL_S, "1" if dedupe else "0"]
        for name, value in fields.items():
            args.extend((name, value))
        return keys, args

    async def publish(
        self, event: Event, *, dedupe: bool = False, replication: Replication | None = None
    ) -> str | None:
        """Append the event to its stream; returns the entry id, or None if deduplicated.

        With `replication`, returns only once that many replicas hold the event (when
        deduplicated, the first publish of its key); NotReplicated if they do not in
        time.
        """
        keys, args = self._publish_args(event, dedupe)
        entry = await self._replicated(self._publish, keys, args, replication)
        return None if entry is None else as_text(entry)

    async def _replicated(
        self,
        script: AsyncScript,
        keys: list[str],
        args: list[Any],
        replication: Replication | None,
    ) -> Any:
        """Run the script; with `replication`, follow it with WAIT on its connection.

        WAIT counts the replicas that reached the last write of the connection it is
        sent on, so the two travel together in one pipeline (a deduplicated publish
        writes its marker again for this; see _PUBLISH).
        """
        if replication is None or replication.replicas <= 0:
            return await script(keys=keys, args=args)
        async with self.client.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)
            pipe.wait(replication.replicas, replication.timeout_ms)
            reply, confirmed = await pipe.execute()
        if int(confirmed) < replication.replicas:
            raise NotReplicated(int(confirmed), replication.replicas, replication.timeout_ms)
        return reply

    async def publish_many(self, events: Iterable[Event], *, dedupe: bool = False) -> int:
        """Publish several events, in order; returns how many were appended. One
        `publish` each: a pipeline would be one round trip on a single server, but
        redis-py's cluster pipeline refuses script calls, and one way serves both."""
        appended = 0
        for event in events:
            appended += await self.publish(event, dedupe=dedupe) is not None
        return appended

    # -- delayed delivery -----------------------------------------------------------------

    def _schedule_args(self, event: Event, due_ms: int) -> tuple[list[str], list[Any]]:
        payload = timer_payload(self.keys.stream(event.name), event.to_wire())
        return [self.keys.timers, self.keys.timer_payloads], [event.id, due_ms, payload]

    async def send_at(
        self, event: Event, due_ms: int, *, replication: Replication | None = None
    ) -> bool:
        """Deliver `event` at epoch-ms `due_ms` (survives restarts; fires once).

        `replication` as for `publish`."""
        keys, args = self._schedule_args(event, due_ms)
        return bool(await self._replicated(self._schedule, keys, args, replication))

    async def send_after(
        self,
        event: Event,
        delay_ms: int,
        *,
        now_ms: int | None = None,
        replication: Replication | None = None,
    ) -> bool:
        """Deliver `event` after `delay_ms` milliseconds."""
        base = int(time.time() * 1000) if now_ms is None else now_ms
        return await self.send_at(event, base + max(0, delay_ms), replication=replication)

    async def move_due_timers(self, limit: int = 500) -> TimerSweep:
        """Move due timers into their streams (atomic; safe from many daemons)."""
        keys = [self.keys.timers, self.keys.timer_payloads, self.keys.streams_index]
        moved, now_ms, next_due = await self._move_due(keys=keys, args=[limit, self.maxlen])
        return TimerSweep(
            moved=int(moved),
            now_ms=int(now_ms),
            next_due_ms=None if next_due is None else int(float(as_text(next_due))),
        )

    # -- consumer-side bookkeeping ------------------------------------------------------------

    async def ensure_group(self, event_name: str, group: str) -> None:
        """Create the consumer group (and stream) if missing; start at the beginning."""
        stream = self.keys.stream(event_name)
        try:
            await self.client.xgroup_create(stream, group, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.client.sadd(self.keys.streams_index, stream)

    async def complete(self, event_name: str, group: str, entry_id: str, event_id: str) -> None:
        """Mark the event handled by `group` and ack it (after its effect is durable)."""
        await self._complete(
            keys=[
                self.keys.stream(event_name),
                self.keys.done(group, event_id),
                self.keys.last_failure(group, entry_id),
            ],
            args=[group, entry_id, DONE_TTL_S],
        )

    async def record_failure(self, group: str, entry_id: str, message: str) -> None:
        """Remember why handling failed, for whichever daemon dead-letters it later."""
        await self.client.set(self.keys.last_failure(group, entry_id), message, ex=DONE_TTL_S)

    async def last_failure(self, group: str, entry_id: str) -> str | None:
        """The last recorded handler error for a pending entry."""
        value = await self.client.get(self.keys.last_failure(group, entry_id))
        return None if value is None else as_text(value)

    async def already_done(self, group: str, event_id: str) -> bool:
        """True when `group` has handled this event before (a redelivery)."""
        return bool(await self.client.exists(self.keys.done(group, event_id)))

    async def dead_letter(
        self,
        event_name: str,
        group: str,
        entry_id: str,
        fields: Mapping[str, str],
        *,
        reason: str,
        deliveries: int,
    ) -> None:
        """Move an entry to the dead-letter stream with the reason, and ack it."""
        record = {
            "stream": self.keys.stream(event_name),
            "event": event_name,
            "group": group,
            "entryId": entry_id,
            "reason": reason,
            "deliveries": str(deliveries),
            "at": str(int(time.time() * 1000)),
            "fields": json.dumps(dict(fields), separators=(",", ":")),
        }
        args: list[Any] = [group, entry_id, self.maxlen]
        for name, value in record.items():
            args.extend((name, value))
        await self._dead_letter(
            keys=[
                self.keys.dead_letters,
                self.keys.stream(event_name),
                self.keys.last_failure(group, entry_id),
            ],
            args=args,
        )

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The newest dead letters, newest first."""
        raw = await self.client.xrevrange(self.keys.dead_letters, count=count)
        return [{"id": entry_id, **fields} for entry_id, fields in cast_entries(raw)]

    async def requeue(self, dead_id: str) -> dict[str, str]:
        """Put dead letter `dead_id`'s entry back on its stream as a new entry (same
        event id and key: groups that handled it before skip it as done, the one that
        failed handles it afresh). Raises LookupError when there is no such dead letter
        (or it was requeued already), ValueError when it cannot be requeued."""
        raw = await self.client.xrange(self.keys.dead_letters, dead_id, dead_id)
        found = cast_entries(raw)
        if not found:
            raise LookupError(f"no dead letter {dead_id}")
        record = found[0][1]
        stream = record.get("stream", "")
        if not stream.startswith(self.keys.stream("")):
            raise ValueError(f"dead letter {dead_id} names a stream outside this namespace")
        try:
            fields = json.loads(record.get("fields", ""))
        except ValueError:
            raise ValueError(f"dead letter {dead_id}: its fields are not JSON") from None
        if (
            not isinstance(fields, dict)
            or not fields
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
        ):
            raise ValueError(f"dead letter {dead_id}: its fields are not an entry's")
        args: list[Any] = [dead_id, self.maxlen]
        for pair in fields.items():
            args.extend(pair)
        entry = await self._requeue(keys=[self.keys.dead_letters, stream], args=args)
        if entry is None:
            raise LookupError(f"no dead letter {dead_id} (requeued already?)")
        return {"deadLetter": dead_id, "stream": stream, "entryId": as_text(entry)}

    # -- large commands ------------------------------------------------------------------

    async def execute_packed(self, *args: str | int | bytes, blocks_s: float = 0.0) -> Any:
        """Run one command packed by hiredis; the raw reply (bytes, lists, ints).

        `blocks_s`: how long the command may wait in Redis by design (a BLOCK), added
        to the connection's read timeout so an idle wait is not taken for a dead server.

        Connection errors and read timeouts are retried as redis-py retries its own
        commands (the pool's retry policy, a fresh connection each time). A reply that
        does not come within the read timeout ends the connection: it is never handed
        back to the pool with that reply still on its way (the next command would read
        it as its own). A client without a packable pool (a single-connection client,
        a cluster) runs the command the ordinary way, with redis-py's reply parsing;
        there a blocking command's wait is kept within the read timeout by the caller
        (`capped_block_ms`).
        """
        client = self.client
        pool = packed_pool(client)
        if pool is None:
            return await client.execute_command(*args)  # type: ignore[no-untyped-call]
        # redis-py packs arguments in Python at ~1 µs each; a batch script has thousands.
        packed = hiredis.pack_command(cast(Any, args))  # the stub types a 1-tuple
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]

        timeout = conn.socket_timeout
        read_timeout = None if timeout is None else timeout + blocks_s

        async def send_and_read() -> Any:
            await conn.send_packed_command(packed, check_health=False)
            if read_timeout is None:
                return await conn.read_response()
            # Our own deadline, not read_response(timeout=...): given a timeout, redis-py
            # answers None when it passes (like a nil reply) and keeps the connection.
            # Cancelled mid-read by this deadline, the connection disconnects itself.
            try:
                with anyio.fail_after(read_timeout):
                    return await conn.read_response(timeout=read_timeout + 1)
            except TimeoutError:
                raise RedisTimeoutError(
                    f"no reply from Redis within {read_timeout:g} s to {args[0]!s}"
                ) from None

        async def reconnect(_error: Exception) -> None:
            await conn.disconnect()

        try:
            reply = await conn.retry.call_with_retry(send_and_read, reconnect)
        except ResponseError:
            await _shielded(pool.release(conn))
            raise  # the error reply was read whole: the connection is still in step
        except BaseException:
            # Cancelled or broken mid-reply: the next user must not read our answer.
            await _shielded(conn.disconnect())
            await _shielded(pool.release(conn))
            raise
        await _shielded(pool.release(conn))
        return reply

    async def eval_packed(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script through execute_packed, loading it once if needed."""
        try:
            return await self.execute_packed("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = await self.client.script_load(script.script)
            return await self.execute_packed("EVALSHA", script.sha, len(keys), *keys, *args)

    async def read_group(
        self, stream: str, group: str, consumer: str, *, count: int, block_ms: int | None
    ) -> list[tuple[str, dict[str, str]]]:
        """New entries for `consumer` (XREADGROUP ... >), blocking up to `block_ms` (None: not)."""
        if block_ms is not None and packed_pool(self.client) is None:
            block_ms = capped_block_ms(self.client, block_ms)
        block = () if block_ms is None else ("BLOCK", block_ms)
        # Packed and parsed by hiredis: redis-py's reply callback walks every field in
        # Python first, and the entries are turned into text here anyway.
        raw = await self.execute_packed(
            "XREADGROUP", "GROUP", group, consumer, "COUNT", count, *block,
            "STREAMS", stream, ">",
            blocks_s=(block_ms or 0) / 1000,
        )  # fmt: skip
        return stream_entries(raw)

    # -- stats -------------------------------------------------------------------------------

    async def groups_of(self, event_name: str) -> list[str]:
        """The consumer groups reading an event's stream ([] when none, or no stream)."""
        try:
            names = await self._group_names(keys=[self.keys.stream(event_name)])
        except aioredis.ResponseError:  # the key holds something else than a stream
            return []
        return [as_text(name) for name in names]

    async def stats(self) -> dict[str, Any]:
        """Lengths, pending, lag, dead letters and timers (for `selfheal queue stats`)."""
        prefix = self.keys.stream("")
        members = sorted(as_text(m) for m in await self.client.smembers(self.keys.streams_index))
        streams: list[dict[str, Any]] = []
        for stream in members:
            length = await self.client.xlen(stream)
            groups: list[dict[str, Any]] = []
            try:
                infos = await self.client.xinfo_groups(stream)
            except aioredis.ResponseError:
                infos = []
            for info in infos:
                lag = info.get("lag")
                groups.append(
                    {
                        "group": as_text(info["name"]),
                        "consumers": int(info["consumers"]),
                        "pending": int(info["pending"]),
                        "lastDeliveredId": as_text(info["last-delivered-id"]),
                        # Redis < 7 does not report lag.
                        "lag": None if lag is None else int(lag),
                    }
                )
            streams.append(
                {"event": stream.removeprefix(prefix), "length": int(length), "groups": groups}
            )
        now_ms = int(time.time() * 1000)
        return {
            "namespace": self.keys.namespace,
            "streams": streams,
            "deadLetters": int(await self.client.xlen(self.keys.dead_letters)),
            "timers": {
                "scheduled": int(await self.client.zcard(self.keys.timers)),
                "due": int(await self.client.zcount(self.keys.timers, "-inf", now_ms)),
            },
        }


async def _shielded(step: Awaitable[None]) -> None:
    """Finish a connection clean-up even while our task is being cancelled."""
    with anyio.CancelScope(shield=True):
        await step


class NotUtf8Fields(dict[str, str]):
    """The fields of an entry that is not valid UTF-8, invalid bytes shown as \\xNN escapes.

    Such an entry is not an event: the consumer dead-letters it with these fields,
    readable and nothing dropped, instead of failing the whole read; `invalid` names
    (as shown) the fields whose name or value is not UTF-8, for the reason.
    """

    def __init__(self) -> None:
        super().__init__()
        self.invalid: list[str] = []


def decode_fields(fields: Mapping[bytes | str, bytes | str] | list[bytes | str]) -> dict[str, str]:
    """A stream entry's fields as text (a mapping, or the flat list of a raw reply)."""
    flat = fields if isinstance(fields, list) else [x for pair in fields.items() for x in pair]
    try:
        texts = iter([value.decode() if isinstance(value, bytes) else value for value in flat])
    except UnicodeDecodeError:
        escaped = NotUtf8Fields()
        raw = iter(flat)
        for raw_name, raw_value in zip(raw, raw, strict=True):
            name = _escaped(raw_name)
            # An escaped name may read like another one: number it rather than drop it.
            unique, copy = name, 1
            while unique in escaped:
                copy += 1
                unique = f"{name} ({copy})"
            escaped[unique] = _escaped(raw_value)
            if not (_is_utf8(raw_name) and _is_utf8(raw_value)):
                escaped.invalid.append(unique)
        return escaped
    return dict(zip(texts, texts, strict=True))  # name, value, name, value, ...


def _escaped(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _is_utf8(value: bytes | str) -> bool:
    try:
        _ = value.decode() if isinstance(value, bytes) else value
    except UnicodeDecodeError:
        return False
    return True


def stream_entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD/XREADGROUP reply, whatever its shape.

    RESP2 gives [[stream, entries], ...], RESP3 {stream: entries}; redis-py's legacy
    RESP3 parsing wraps each stream's entries in one more list.
    """
    if not raw:
        return []
    per_stream = raw.values() if isinstance(raw, dict) else [entries for _, entries in raw]
    found: list[tuple[str, dict[str, str]]] = []
    for entries in per_stream:
        first = entries[0] if entries else None
        if isinstance(first, list) and first and isinstance(first[0], list | tuple):
            entries = first  # the extra wrapping
        found.extend(cast_entries(entries))
    return found


def cast_entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """Normalise XREADGROUP/XAUTOCLAIM entry lists; a trimmed entry has no fields."""
    entries: list[tuple[str, dict[str, str]]] = []
    for entry_id, fields in cast(list[tuple[Any, Any]], raw):
        if fields is None:  # the entry was trimmed away while pending
            entries.append((as_text(entry_id), {}))
            continue
        entries.append((as_text(entry_id), decode_fields(fields)))
    return entries
