"""Typesense backups: an on-demand server-side snapshot, archived into one tar with a manifest."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from selfheal.backup.model import Artifact
from selfheal.backup.sources.archive import (
    SourceError,
    archive_extension,
    new_artifact_name,
    now_utc,
    require_compression,
    write_manifest,
    write_tree_archive,
)
from selfheal.config.schema_backups import TypesenseBackupSettings
from selfheal.core.artifacts import manifest_name
from selfheal.redact import redact_text

__all__ = ["SourceError", "TypesenseSource"]

log = logging.getLogger("selfheal.backup.typesense")

API_KEY_HEADER = "X-TYPESENSE-API-KEY"
# Snapshots of a large index take a while; metadata calls should answer at once.
QUERY_TIMEOUT = httpx.Timeout(10.0, read=30.0)
# Snapshot folders are named by their UTC stamp; pruning touches nothing else.
# <yyyymmddThhmmssZ>, and since names carry it, -<ms>-<6 hex>: sortable either way.
SNAPSHOT_DIR_NAME = re.compile(r"^\d{8}T\d{6}Z(?:-\d{3}-[0-9a-f]{6})?$")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class _RootUnusable(SourceError):
    """This snapshot root did not work; another root may."""


class TypesenseSource:
    """Takes a Typesense snapshot and archives it as `typesense-<stamp>.tar[.gz|.zst]`."""

    target = "typesense"

    def __init__(
        self,
        settings: TypesenseBackupSettings,
        *,
        snapshot_root: Path,
        staging_dir: Path,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = now_utc,
    ) -> None:
        self.settings = settings
        self.snapshot_root = snapshot_root
        self.staging_dir = staging_dir
        self._http = http
        self._clock = clock
        self._url = settings.url.rstrip("/")

    @property
    def snapshot_roots(self) -> list[Path]:
        """The configured root, then the fallback root when one is set."""
        fallback = self.settings.snapshot_fallback_root
        roots = [self.snapshot_root]
        if fallback is not None and fallback != self.snapshot_root:
            roots.append(fallback)
        return roots

    async def create(self, *, run_id: str | None = None) -> Artifact:
        """Snapshot, archive and describe; the artifact lands in the staging dir."""
        compression = self.settings.compression
        require_compression(compression)
        created = self._clock().astimezone(UTC)
        name, stamp = new_artifact_name(self.target, created, archive_extension(compression))
        async with self._client() as http:
            version = await self._get_json(http, "/debug")
            collections = await self._get_json(http, "/collections")
            # Named like the artifact: a second run in the same second gets its own folder.
            snapshot = await self._snapshot(http, stamp)
        path = self.staging_dir / name
        manifest_path = self.staging_dir / manifest_name(name)
        try:
            digest = await anyio.to_thread.run_sync(write_tree_archive, snapshot, path, compression)
            manifest: dict[str, Any] = {
                "name": name,
                "target": self.target,
                "source": "typesense",
                "sha256": digest.sha256,
                "size": digest.size,
                "file_count": digest.file_count,
                "compression": compression,
                "server_version": _server_version(version),
                "collections": _collection_counts(collections),
                "created_at": created.strftime(ISO_FORMAT),
                "snapshot_path": str(snapshot),
                **({"runId": run_id} if run_id else {}),
            }
            await anyio.to_thread.run_sync(write_manifest, manifest_path, manifest)
        except BaseException:
            # A failed or cancelled run leaves nothing under a final name.
            path.unlink(missing_ok=True)
            manifest_path.unlink(missing_ok=True)
            raise
        log.info("typesense snapshot archived", extra={"artifact": name, "bytes": digest.size})
        return Artifact(target=self.target, name=name, path=path, manifest=manifest)

    async def prune_snapshots(self, keep_paths: Collection[Path]) -> list[Path]:
        """Delete snapshot folders beyond the newest `snapshotRetentionCount`, never a kept one."""
        protected = {_resolved(p) for p in keep_paths}
        # Filesystem calls run in a thread: a hung mount must not stall the event loop.
        found = await anyio.to_thread.run_sync(_snapshot_dirs, self.snapshot_roots)
        deleted: list[Path] = []
        for _, path in found[self.settings.snapshot_retention_count :]:
            if _resolved(path) in protected:
                continue
            try:
                # rmtree does not follow symlinks inside the (untrusted) snapshot.
                await anyio.to_thread.run_sync(shutil.rmtree, path)
            except OSError as exc:
                log.warning("cannot prune snapshot %s: %s", path, exc.strerror or exc)
                continue
            deleted.append(path)
        return deleted

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._http is not None:
            yield self._http
            return
        async with httpx.AsyncClient(timeout=QUERY_TIMEOUT) as client:
            yield client

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {API_KEY_HEADER: key} if key else {}

    async def _request(
        self, http: httpx.AsyncClient, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await http.request(
                method, f"{self._url}{path}", headers=self._headers(), **kwargs
            )
        except httpx.HTTPError as exc:
            raise SourceError(
                f"cannot reach Typesense at {redact_text(self._url)}: "
                f"{type(exc).__name__}: {redact_text(str(exc))}",
                kind="source.typesense",
                exception=type(exc).__name__,
            ) from exc
        if response.status_code in (401, 403):
            raise SourceError(
                f"permission denied: Typesense rejected the API key (HTTP {response.status_code})",
                kind="source.typesense",
                exception="PermissionDenied",
            )
        return response

    async def _get_json(self, http: httpx.AsyncClient, path: str) -> Any:
        response = await self._request(http, "GET", path, timeout=QUERY_TIMEOUT)
        if response.status_code != 200:
            raise SourceError(
                f"Typesense GET {path} failed ({response.status_code}): {_body(response)}",
                kind="source.typesense",
            )
        return response.json()

    async def _snapshot(self, http: httpx.AsyncClient, stamp: str) -> Path:
        """Ask for a snapshot in each root in turn; the first one that stages files wins."""
        failures: list[_RootUnusable] = []
        for root in self.snapshot_roots:
            try:
                return await self._snapshot_into(http, root / stamp)
            except _RootUnusable as exc:
                failures.append(exc)
                log.warning("typesense snapshot root unusable: %s", exc)
        raise SourceError(
            "; ".join(map(str, failures)),
            kind="source.typesense",
            errno_name=failures[-1].errno_name,
            exception=failures[-1].exception,
        )

    async def _snapshot_into(self, http: httpx.AsyncClient, target: Path) -> Path:
        await anyio.to_thread.run_sync(_prepare_root, target)
        response = await self._request(
            http,
            "POST",
            "/operations/snapshot",
            params={"snapshot_path": str(target)},
            timeout=httpx.Timeout(10.0, read=self.settings.snapshot_timeout_seconds),
        )
        if not response.is_success:
            raise _RootUnusable(f"snapshot failed ({response.status_code}): {_body(response)}")
        if not await anyio.to_thread.run_sync(_has_snapshot_files, target):
            await anyio.to_thread.run_sync(_remove_if_empty, target)
            raise _RootUnusable(
                f"no snapshot files staged in {target}: Typesense answered success but wrote "
                "nothing there (is the snapshot root on the Typesense host and writable by it?)"
            )
        return target


def _prepare_root(target: Path) -> None:
    """The root must exist (created without parents) and the stamp folder must be fresh."""
    root = target.parent
    try:
        # No parents: a root on a missing mount must not appear on the local disk.
        root.mkdir(exist_ok=True)
        if target.exists() and any(target.iterdir()):
            raise _RootUnusable(f"snapshot folder {target} already exists and is not empty")
    except OSError as exc:
        wrapped = SourceError.from_os_error(f"snapshot root {root} is unusable", exc)
        raise _RootUnusable(
            str(wrapped), errno_name=wrapped.errno_name, exception=wrapped.exception
        ) from exc


def _snapshot_dirs(roots: list[Path]) -> list[tuple[str, Path]]:
    """Our snapshot folders in every root, newest first (missing roots have none)."""
    found: list[tuple[str, Path]] = []
    for root in roots:
        try:
            with os.scandir(root) as entries:
                found += [
                    (entry.name, root / entry.name)
                    for entry in entries
                    if SNAPSHOT_DIR_NAME.fullmatch(entry.name)
                    and entry.is_dir(follow_symlinks=False)
                ]
        except OSError:
            continue
    return sorted(found, reverse=True)


def _has_snapshot_files(target: Path) -> bool:
    """Typesense writes `state/meta` and `state/snapshot/...`; both must hold files."""
    return _holds_file(target / "state" / "meta") and _holds_file(target / "state" / "snapshot")


def _holds_file(folder: Path) -> bool:
    try:
        for _, _, files in os.walk(folder):
            if files:
                return True
    except OSError:
        return False
    return False


def _remove_if_empty(target: Path) -> None:
    try:
        for folder, _, _ in sorted(os.walk(target), reverse=True):
            os.rmdir(folder)
    except OSError:
        pass  # not empty, or already gone: leave it for a human or for pruning


def _collection_counts(collections: Any) -> list[dict[str, Any]]:
    items = collections if isinstance(collections, list) else []
    counts = [
        {"name": str(c.get("name")), "num_documents": int(c.get("num_documents", 0))}
        for c in items
        if isinstance(c, dict)
    ]
    return sorted(counts, key=lambda c: c["name"])


def _server_version(debug: Any) -> str:
    return str(debug.get("version", "unknown")) if isinstance(debug, dict) else "unknown"


def _body(response: httpx.Response) -> str:
    return redact_text(response.text[:300].strip())


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()
