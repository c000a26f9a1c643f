"""A Redis lock with expiry and renewal: one backup per target at a time, across daemons.

The holder renews it every third of its time to live; if a renewal finds the lock
lost (expired under a long pause, or taken over), the held block is cancelled so
two daemons never keep working on the same target.

A holding's token starts with its process's consumer name (host, pid, start time):
a lock left by a killed process of this host is taken over at once instead of
blocking the next run until it expires (a run killed between taking the lock and
writing its marker, or between clearing the marker and releasing it, leaves no
other trace of it). A holder on another host is only ever waited out.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis

from selfheal.bus.consumer import is_dead_local, local_consumer_name
from selfheal.bus.streams import as_text
from selfheal.errors import SelfhealError

log = logging.getLogger("selfheal.bus.lock")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_OWNER_END = "/"  # never part of a host name, so the last one ends the owner


def owner_of(token: str) -> str | None:
    """The consumer name a holding's token starts with (None for a token without one)."""
    owner, sep, _ = token.rpartition(_OWNER_END)
    return owner if sep else None


def holder_is_dead(token: str) -> bool:
    """True when the holding's process was of this host and no longer runs."""
    owner = owner_of(token)
    return owner is not None and is_dead_local(owner)


class LockBusy(SelfhealError):
    """Someone else holds the lock."""


class LockLost(SelfhealError):
    """The lock expired or was taken while held; the work was stopped."""


class RedisLock:
    """One named lock."""

    def __init__(
        self, client: aioredis.Redis, key: str, *, ttl_ms: int = 60_000, token: str | None = None
    ) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = ttl_ms
        # A known token names a holding that ended without releasing (a killed process),
        # so that exactly that holding can be released; a new holding gets a fresh one.
        self.token = token or f"{local_consumer_name()}{_OWNER_END}{secrets.token_hex(16)}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lock if free, or if its holder is a dead process of this host."""
        if await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        holder = await self.holder()
        if holder is None or not holder_is_dead(holder):
            return False
        # Deleted only if that dead holding is still the one there (not a live newcomer's).
        if await self._release(keys=[self.key], args=[holder]):
            log.warning("%s: taking over the lock of dead process %s", self.key, owner_of(holder))
        return bool(await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def renew(self) -> bool:
        """Extend the lock if we still hold it."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> None:
        """Give the lock back if we still hold it."""
        await self._release(keys=[self.key], args=[self.token])

    async def holder(self) -> str | None:
        """The current holder's token, if any."""
        value = await self.client.get(self.key)
        if value is None:
            return None
        return as_text(value)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Hold the lock for the block; LockBusy if taken, LockLost if it slips away."""
        if not await self.acquire():
            raise LockBusy(f"{self.key} is held by another run")
        lost = False
        try:
            async with anyio.create_task_group() as tg:

                async def keep() -> None:
                    nonlocal lost
                    while True:
                        await anyio.sleep(self.ttl_ms / 3000)
                        if not await self.renew():
                            lost = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(keep, name=f"lock-renew:{self.key}")
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.release()
        if lost:
            raise LockLost(f"{self.key} was lost while held; the run was stopped")
