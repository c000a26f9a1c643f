"""A Redis lock with expiry and renewal: one backup per target at a time, across daemons.

The holder renews it every third of its time to live; if a renewal finds the lock
lost (expired under a long pause, or taken over), the held block is cancelled so
two daemons never keep working on the same target.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis.asyncio as aioredis

from selfheal.bus.streams import as_text
from selfheal.errors import SelfhealError

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
        self.token = token or secrets.token_hex(16)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self) -> bool:
        """Take the lock if free."""
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
