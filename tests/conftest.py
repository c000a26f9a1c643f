"""Shared fixtures: short temporary homes (Unix socket paths are short) and real servers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from selfheal import redact
from selfheal.bus.keys import Keys
from selfheal.bus.streams import Bus
from selfheal.telemetry import Telemetry, setup_telemetry
from tests.support.daemon import Daemons
from tests.support.mounts import Mounts
from tests.support.servers import RedisServer
from tests.support.sshd import SshServer, running_sshd


@pytest.fixture(autouse=True)
def _secrets_registered_per_test() -> Iterator[None]:
    """Secrets a test registers (load_config registers a config's) do not outlive it."""
    before = redact._known
    yield
    redact._known = before


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A temporary HOME short enough for Unix socket paths inside it."""
    path = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_home: Path) -> Iterator[Daemons]:
    """Daemons started by a test are killed, and their redis-servers reaped, afterwards."""
    daemons = Daemons(short_home)
    try:
        yield daemons
    finally:
        daemons.kill_all()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop(kill=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH sshd on a loopback port with throwaway keys, killed afterwards."""
    yield from running_sshd(tmp_path / "sshd")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, like the daemon."""
    return "asyncio"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the test's redis-server."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def bus(redis_client: aioredis.Redis) -> Bus:
    """The bus on the test's redis-server, in namespace `test`."""
    return Bus(redis_client, Keys("test"), maxlen=10_000)


@pytest.fixture
def telemetry(tmp_path: Path) -> Iterator[Telemetry]:
    """Telemetry writing spans to a JSONL file in the test's folder."""
    made = setup_telemetry(
        service_name="selfheal-test",
        service_version="0",
        span_file=tmp_path / "spans.jsonl",
        max_bytes=10_000_000,
        backups=1,
        env={},
    )
    try:
        yield made
    finally:
        made.shutdown()


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    """Real tmpfs mounts for the test, all unmounted afterwards."""
    made = Mounts(tmp_path / "mnt")
    try:
        yield made
    finally:
        made.cleanup()
