"""The Redis link against a real redis-server: ready once it answers, ends once it stops."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from selfheal.bus import connection
from selfheal.bus.connection import RedisLink, RedisUnavailable
from selfheal.config.schema import RedisSettings
from tests.support.servers import RedisServer

pytestmark = pytest.mark.anyio


async def test_link_ends_when_redis_stops_so_the_supervisor_restarts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection, "PROBE_INTERVAL_S", 0.1)
    server = RedisServer(tmp_path / "r").start()
    try:
        link = RedisLink(RedisSettings.model_validate({"url": server.url}))
        ended: list[BaseException] = []
        with anyio.fail_after(20):
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(link.run)
                    assert link.status.connected is True
                    assert await link.client.ping() is True
                    server.stop(kill=True)
            except* RedisUnavailable as group:
                ended.extend(group.exceptions)
        assert len(ended) == 1 and "unreachable" in str(ended[0])
        assert link.status.connected is False
        assert link.status.last_error is not None
    finally:
        server.stop(kill=True)


async def test_link_waits_for_redis_at_start(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r")
    link = RedisLink(RedisSettings.model_validate({"url": server.url}))
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.run)
            await anyio.sleep(0.5)  # no server yet: the link waits, it does not fail
            assert link.status.connected is False
            server.start()
            try:
                while not link.status.connected:  # noqa: ASYNC110 - bounded by fail_after
                    await anyio.sleep(0.05)
            finally:
                tg.cancel_scope.cancel()
                server.stop(kill=True)
