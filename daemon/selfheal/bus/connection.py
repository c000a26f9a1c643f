"""The daemon's Redis connection: embedded socket, URL, Sentinel or Cluster.

`RedisLink` is a service: it connects, signals readiness once Redis answers, then
keeps probing so `status` always tells the truth. When a probe fails after that,
the service raises: the supervisor restarts it (a fresh client, with its restart
backoff, counted in `status`), and the services that used the old client fail
on it and are restarted onto the new one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from selfheal.config.schema import RedisSettings
from selfheal.errors import ConfigError, SelfhealError
from selfheal.redact import redact_text

log = logging.getLogger("selfheal.redis")

PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_MAX_S = 30.0


class RedisUnavailable(SelfhealError, ConnectionError):
    """The link's Redis stopped answering; the service ends so the supervisor restarts it."""


# The bus keeps every key in one hash slot, so the commands it uses behave the same
# on a Cluster client; both are typed as the standalone client.
RedisClient = aioredis.Redis


@dataclass
class RedisLinkStatus:
    """Connection facts shown by `status` (target already redacted)."""

    mode: str
    target: str
    connected: bool = False
    last_error: str | None = None
    last_ok_at: float | None = None
    latency_ms: float | None = None
    server_version: str | None = None


def _sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """Split redis://[:pw@]h1:p1,h2:p2[/db] into sentinel nodes, password and db."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(
            f"selfheal.redis.url: Sentinel needs a redis:// URL, got {parts.scheme}://"
        )
    netloc = parts.netloc
    password: str | None = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        password = unquote(userinfo.split(":", 1)[1]) if ":" in userinfo else None
    nodes: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"selfheal.redis.url: sentinel node {item!r} must be host:port")
        nodes.append((host, int(port)))
    db_text = parts.path.strip("/")
    db = int(db_text) if db_text.isdigit() else 0
    return nodes, password, db


def make_client(settings: RedisSettings, embedded_socket: Path | None) -> RedisClient:
    """Build the redis-py client the settings ask for (no I/O yet)."""
    timeout = settings.connect_timeout_seconds
    if settings.url == "embedded":
        if embedded_socket is None:
            raise ConfigError("selfheal.redis.url is 'embedded' but no embedded server runs")
        return aioredis.Redis(unix_socket_path=str(embedded_socket), socket_connect_timeout=timeout)
    if settings.sentinel_master:
        nodes, password, db = _sentinel_nodes(settings.url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            socket_connect_timeout=timeout,
            sentinel_kwargs={"password": password, "socket_connect_timeout": timeout},
            password=password,
            db=db,
        )
        client: aioredis.Redis = sentinel.master_for(settings.sentinel_master)
        return client
    if settings.cluster:
        return cast(
            aioredis.Redis, RedisCluster.from_url(settings.url, socket_connect_timeout=timeout)
        )
    return aioredis.Redis.from_url(settings.url, socket_connect_timeout=timeout)


def describe_target(settings: RedisSettings, embedded_socket: Path | None) -> tuple[str, str]:
    """(mode, redacted target) for status output."""
    if settings.url == "embedded":
        return "embedded", f"unix://{embedded_socket}"
    if settings.sentinel_master:
        return "sentinel", redact_text(f"{settings.url} master={settings.sentinel_master}")
    if settings.cluster:
        return "cluster", redact_text(settings.url)
    return "url", redact_text(settings.url)


class RedisLink:
    """Service owning the daemon's Redis client and its health."""

    name = "redis"

    def __init__(self, settings: RedisSettings, embedded_socket: Path | None = None) -> None:
        self.settings = settings
        self._embedded_socket = embedded_socket
        mode, target = describe_target(settings, embedded_socket)
        self.status = RedisLinkStatus(mode=mode, target=target)
        self._client: RedisClient | None = None

    @property
    def client(self) -> RedisClient:
        """The live client; only valid while the service runs."""
        if self._client is None:
            raise RuntimeError("Redis link is not started")
        return self._client

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect (waiting with backoff until Redis answers), signal readiness, then
        probe; raise RedisUnavailable once a probe fails."""
        self._client = make_client(self.settings, self._embedded_socket)
        backoff = 0.25
        try:
            while not await self._probe():
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
            task_status.started()
            while True:
                await anyio.sleep(PROBE_INTERVAL_S)
                if not await self._probe():
                    raise RedisUnavailable(
                        f"redis {self.status.target} unreachable: {self.status.last_error}"
                    )
        finally:
            with anyio.CancelScope(shield=True):
                client, self._client = self._client, None
                if client is not None:
                    await client.aclose()
                self.status.connected = False

    async def _probe(self) -> bool:
        assert self._client is not None
        started = time.perf_counter()
        try:
            with anyio.fail_after(PROBE_TIMEOUT_S):
                await self._client.ping()
                if self.status.server_version is None:
                    info: dict[str, Any] = await self._client.info("server")
                    self.status.server_version = str(info.get("redis_version"))
        except (TimeoutError, OSError, aioredis.RedisError) as exc:
            if self.status.connected or self.status.last_error is None:
                log.warning("redis %s unreachable: %s", self.status.target, redact_text(str(exc)))
            self.status.connected = False
            self.status.last_error = redact_text(f"{type(exc).__name__}: {exc}")
            return False
        if not self.status.connected and self.status.last_error is not None:
            log.info("redis %s reachable again", self.status.target)
        self.status.connected = True
        self.status.last_ok_at = time.time()
        self.status.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        return True
