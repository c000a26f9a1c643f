"""The daemon's Redis connection: embedded socket, URL, Sentinel or Cluster.

`RedisLink` is a service: it connects, signals readiness once Redis answers, then
keeps probing so `status` always tells the truth. When a probe fails after that,
the service raises: the supervisor restarts it (a fresh client, with its restart
backoff, counted in `status`), and the services that used the old client fail
on it and are restarted onto the new one.

On Sentinel the probe also asks the sentinels which server is the master. Once
they name another one (a failover), the link ends the same way: its client is
closed, so no service keeps writing to the old master (which takes writes until
the sentinels turn it into a replica, and then drops them), and every service
starts again on the new master, taking over what it had left pending.

On a Cluster the client follows a failover itself (MOVED replies, a refreshed slot
map). A link that ends there starts again from every node its clients have found
(`ClusterSeeds`), not only the URL's: that one may be the master that failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskStatus
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from selfheal.bus.keys import Keys
from selfheal.config.schema import RedisSettings
from selfheal.errors import ConfigError, SelfhealError
from selfheal.redact import redact_text

log = logging.getLogger("selfheal.redis")

PROBE_INTERVAL_S = 5.0
# On Sentinel the probe also watches for a failover: the sooner it sees one, the
# fewer writes go to a master that is no longer one.
SENTINEL_PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_MAX_S = 30.0


class RedisUnavailable(SelfhealError, ConnectionError):
    """The link's Redis stopped answering; the service ends so the supervisor restarts it."""


# What a command can raise while its Redis is out of reach or changing hands: the
# connection dropped or timed out; a Cluster with a slot's master down, or a client that
# reaches no node (RedisClusterException is no RedisError); a write that reached a master
# just demoted to a replica; a slot being moved; the link finding Redis gone. The command
# may or may not have happened.
REDIS_UNREACHABLE: tuple[type[Exception], ...] = (
    RedisUnavailable,
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    ClusterError,
    ReadOnlyError,
    TryAgainError,
    RedisClusterException,
)


# The bus keeps every key in one hash slot, so the commands it uses behave the same
# on a Cluster client; both are typed as the standalone client.
RedisClient = aioredis.Redis


@dataclass
class RedisLinkStatus:
    """Connection facts shown by `status` (target already redacted)."""

    mode: str
    target: str
    connected: bool = False
    # Sentinel: the master the sentinels named when the link connected (host:port).
    # Cluster: the master the client sends the namespace's slot to (last probe).
    master: str | None = None
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


@dataclass
class ClusterSeeds:
    """The cluster nodes the link's clients found, kept by the daemon across the link's
    restarts (each restart is a new link and a new client) for the URL they came from."""

    url: str = ""
    nodes: tuple[tuple[str, int], ...] = ()

    def for_url(self, url: str) -> tuple[tuple[str, int], ...]:
        return self.nodes if url == self.url else ()


def make_client(
    settings: RedisSettings,
    embedded_socket: Path | None,
    cluster_seeds: tuple[tuple[str, int], ...] = (),
) -> RedisClient:
    """Build the redis-py client the settings ask for (no I/O yet). A cluster client
    starts from the URL's node and `cluster_seeds`, whichever answers first."""
    timeout = settings.connect_timeout_seconds
    if settings.url == "embedded":
        if embedded_socket is None:
            raise ConfigError("selfheal.redis.url is 'embedded' but no embedded server runs")
        return aioredis.Redis(unix_socket_path=str(embedded_socket), socket_connect_timeout=timeout)
    if settings.sentinel_master:
        nodes, password, db = _sentinel_nodes(settings.url)
        # Through a typed name: redis-py types Sentinel's __init__ in some releases only.
        make_sentinel: Callable[..., Sentinel] = Sentinel
        sentinel = make_sentinel(
            nodes,
            socket_connect_timeout=timeout,
            sentinel_kwargs={"password": password, "socket_connect_timeout": timeout},
            password=password,
            db=db,
        )
        client: aioredis.Redis = sentinel.master_for(settings.sentinel_master)
        return client
    if settings.cluster:
        seeds = [ClusterNode(host, port) for host, port in cluster_seeds] or None
        return cast(
            aioredis.Redis,
            RedisCluster.from_url(
                settings.url, startup_nodes=seeds, socket_connect_timeout=timeout
            ),
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

    def __init__(
        self,
        settings: RedisSettings,
        embedded_socket: Path | None = None,
        cluster_seeds: ClusterSeeds | None = None,
    ) -> None:
        self.settings = settings
        self._embedded_socket = embedded_socket
        self._seeds = cluster_seeds if cluster_seeds is not None else ClusterSeeds()
        mode, target = describe_target(settings, embedded_socket)
        self.status = RedisLinkStatus(mode=mode, target=target)
        self._client: RedisClient | None = None
        self._moved = False

    @property
    def client(self) -> RedisClient:
        """The live client; only valid while the service runs."""
        if self._client is None:
            raise RuntimeError("Redis link is not started")
        return self._client

    @property
    def running(self) -> bool:
        """True while the service holds a client (between a failure and the link's
        restart it holds none)."""
        return self._client is not None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect (waiting with backoff until Redis answers), signal readiness, then
        probe; raise RedisUnavailable once a probe fails or the Sentinel master moves."""
        self._client = make_client(
            self.settings, self._embedded_socket, self._seeds.for_url(self.settings.url)
        )
        interval = SENTINEL_PROBE_INTERVAL_S if self.settings.sentinel_master else PROBE_INTERVAL_S
        backoff = 0.25
        try:
            while not await self._probe():
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_S)
            task_status.started()
            while True:
                await anyio.sleep(interval)
                if not await self._probe():
                    what = "" if self._moved else " unreachable"
                    raise RedisUnavailable(
                        f"redis {self.status.target}{what}: {self.status.last_error}"
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
            if self.settings.sentinel_master:
                await self._check_master()
            elif self.settings.cluster:
                self._note_cluster()
        except MasterMoved as exc:
            self._moved = True
            log.warning("redis %s: %s; connecting to the new master", self.status.target, exc)
            self.status.connected = False
            self.status.last_error = str(exc)
            return False
        # A cluster client that reaches no node raises RedisClusterException, which is
        # not a RedisError: the link waits for Redis then as it does for a lone server.
        except (TimeoutError, OSError, aioredis.RedisError, RedisClusterException) as exc:
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

    def _note_cluster(self) -> None:
        """Keep the nodes the client knows (for the next link's client) and the master
        it sends the namespace's slot to (for `status`). No I/O: the client's own map."""
        client = cast(RedisCluster, self._client)
        nodes = tuple((node.host, int(node.port)) for node in client.get_nodes())
        if nodes:
            self._seeds.url, self._seeds.nodes = self.settings.url, nodes
        owner = client.get_node_from_key(Keys(self.settings.namespace).tag)
        self.status.master = None if owner is None else f"{owner.host}:{owner.port}"

    async def _check_master(self) -> None:
        """Ask the sentinels for the master; MasterMoved once it is not the one the link
        connected to. (The pool drops its idle connections to the old master itself.)"""
        assert self._client is not None
        pool = cast(SentinelConnectionPool, self._client.connection_pool)
        # The sentinels are asked in turn, each within the connect timeout.
        nodes = len(_sentinel_nodes(self.settings.url)[0])
        with anyio.fail_after(PROBE_TIMEOUT_S + nodes * self.settings.connect_timeout_seconds):
            host, port = await pool.get_master_address()  # type: ignore[no-untyped-call]
        named = f"{as_text(host)}:{port}"
        if self.status.master is None:
            self.status.master = named
        elif named != self.status.master:
            raise MasterMoved(
                f"the sentinels moved master {self.settings.sentinel_master} "
                f"from {self.status.master} to {named}"
            )


class MasterMoved(SelfhealError):
    """The sentinels promoted another server: the link starts again on the new master."""


def as_text(value: bytes | str) -> str:
    """An address part as text (sentinels answer bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)
