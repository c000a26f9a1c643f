"""Large commands written one after another on one connection, their replies read at the end.

Redis runs the commands of one connection in the order they arrive, so each sees
what the earlier ones wrote, and the client never waits between them: a caller
can write a command, go on computing the next one while Redis runs it, and read
every reply once it is done. Commands are packed by hiredis (redis-py packs
arguments in Python at ~1 µs each).

    async with PackedPipeline(client) as pipe:
        await pipe.send("EVALSHA", sha, 1, key, blob)
        ...
        replies = await pipe.replies()

An error reply takes its command's place in `replies()` as the exception (the
connection stays in step). A connection that broke, or that was left with
replies unread (an exception or a cancellation inside the block), is closed
rather than handed back to the pool. A client without a plain connection pool
(a single-connection client, a cluster) runs each command as it is sent, the
ordinary way.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, cast

import anyio
import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError


def packed_pool(client: aioredis.Redis) -> ConnectionPool | None:
    """The client's plain connection pool, on whose connections commands can be written
    packed; None for a single-connection client or a cluster (the ordinary way there)."""
    pool = getattr(client, "connection_pool", None)
    if getattr(client, "connection", None) is not None or type(pool) is not ConnectionPool:
        return None
    return pool


class PackedPipeline:
    """Commands on one connection, replies read in order (see the module docstring)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pool = packed_pool(client)
        self._conn: Connection | None = None
        self._unread = 0  # commands written whose replies were not read yet
        self._done: list[Any] = []  # replies of commands run the ordinary way

    async def __aenter__(self) -> PackedPipeline:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None or self._pool is None:
            return
        with anyio.CancelScope(shield=True):
            if self._unread:
                # Replies still on their way: the next user of the connection must not read them.
                await conn.disconnect()
            await self._pool.release(conn)

    async def send(self, *args: str | int | bytes) -> None:
        """Write one command; its reply is read by `replies`."""
        if self._pool is None:
            try:
                reply = await self._client.execute_command(*args)  # type: ignore[no-untyped-call]
            except ResponseError as error:
                reply = error
            self._done.append(reply)
            return
        if self._conn is None:
            self._conn = cast(Connection, await self._pool.get_connection())  # type: ignore[no-untyped-call]
        packed = hiredis.pack_command(cast(Any, args))  # the stub types a 1-tuple
        self._unread += 1  # counted first: a write cut short leaves the connection unusable
        await write_packed(self._conn, packed)

    async def send_script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        """Write an EVALSHA of a registered script (loaded beforehand: NOSCRIPT is a reply)."""
        await self.send("EVALSHA", script.sha, len(keys), *keys, *args)

    async def replies(self) -> list[Any]:
        """The replies of every command sent so far, in order (errors as exceptions)."""
        replies, self._done = self._done, []
        conn = self._conn
        while self._unread:
            assert conn is not None
            try:
                reply = await conn.read_response()
            except ResponseError as error:
                reply = error  # the error reply was read whole: still in step
            self._unread -= 1
            replies.append(reply)
        return replies


async def write_packed(conn: Connection, packed: bytes) -> None:
    """conn.send_packed_command(packed), without its cost when the socket takes it at once.

    send_packed_command runs every write in a task of its own under the socket
    timeout (redis-py's default is 5 s): tens of microseconds a call. Here the
    bytes go straight to the transport; only a write the socket could not take
    at once waits for it to drain, through send_packed_command and its timeout.
    """
    writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
    if writer is None or writer.transport.is_closing():  # not connected yet, or closing
        await conn.send_packed_command(packed, check_health=False)
        return
    writer.write(packed)
    if writer.transport.get_write_buffer_size():
        await conn.send_packed_command(b"", check_health=False)
