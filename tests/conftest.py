"""Shared fixtures: short temporary homes (Unix socket paths are short) and real servers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess
from tests.support.servers import RedisServer


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A temporary HOME short enough for Unix socket paths inside it."""
    path = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon_factory(short_home: Path) -> Iterator[list[DaemonProcess]]:
    """Daemons made by a test are killed, and their redis-servers reaped, afterwards."""
    made: list[DaemonProcess] = []
    yield made
    for daemon in made:
        daemon.kill()
        for proc in daemon.redis_servers():
            proc.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a loopback port."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop(kill=True)
