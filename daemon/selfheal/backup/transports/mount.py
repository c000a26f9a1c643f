"""The mount transport: copies onto the locally mounted NAS share, and only when it is the NAS."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial as partial_call
from pathlib import Path, PurePosixPath
from typing import Final, TypeVar

import anyio

from selfheal.backup.model import (
    Delivery,
    FetchedCopy,
    ProbeResult,
    ProgressFn,
    RemoteEntry,
    TransportError,
    name_taken,
    same_manifest,
)
from selfheal.backup.transports.noreplace import rename_noreplace
from selfheal.core.artifacts import PARTIAL_SUFFIX, manifest_name

MARKER_NAME: Final = ".selfheal-nas"
CHUNK_BYTES: Final = 8 << 20  # big chunks: few thread hops, near-kernel copy speed
PROBE_TIMEOUT_S: Final = 5.0  # a hung network mount must not hang the probe
CLEANUP_TIMEOUT_S: Final = 10.0
_MARKER_READ_LIMIT: Final = 64 << 10
_MANIFEST_READ_LIMIT: Final = 1 << 20
# copy_file_range refuses some file pairs (other filesystems, old kernels, sandboxes);
# the plain read/write loop still works there and surfaces the real errors.
_KERNEL_COPY_UNSUPPORTED: Final = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM, errno.EBADF}
)

_FULLFSYNC: Final[int | None] = getattr(fcntl, "F_FULLFSYNC", None)

T = TypeVar("T")


def mark_nas(path: Path, nas_id: str) -> Path:
    """Write the marker that says `path` is the NAS root; returns the marker's path."""
    if not nas_id.strip():
        raise ValueError("nas_id must not be empty")
    marker = path / MARKER_NAME
    body = json.dumps({"nasId": nas_id, "markedAt": datetime.now(UTC).isoformat()}) + "\n"
    tmp = path / f"{MARKER_NAME}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body.encode())
        _durable_sync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, marker)
    _fsync_dir(path)
    return marker


def read_marker(path: Path) -> str | None:
    """The nasId of the marker in the folder `path`; None when absent or unreadable."""
    try:
        with open(path / MARKER_NAME, "rb") as fh:
            data = json.loads(fh.read(_MARKER_READ_LIMIT))
    except (OSError, ValueError):
        return None
    nas_id = data.get("nasId") if isinstance(data, dict) else None
    return nas_id if isinstance(nas_id, str) and nas_id else None


def relative_parts(remote: PurePosixPath, *, allow_root: bool = False) -> tuple[str, ...]:
    """The parts of a path relative to the NAS root; refuses absolute paths and `..`."""
    if remote.is_absolute():
        raise ValueError(f"remote path must be relative to the NAS root: {remote}")
    if ".." in remote.parts:
        raise ValueError(f"remote path must not contain '..': {remote}")
    if not remote.parts and not allow_root:
        raise ValueError("remote path names no file")
    return remote.parts


def _durable_sync(fd: int) -> None:
    # On macOS fsync stops at the drive cache; F_FULLFSYNC reaches the medium (or SMB flush).
    if _FULLFSYNC is not None:
        try:
            fcntl.fcntl(fd, _FULLFSYNC)
            return
        except OSError:
            pass  # not every filesystem supports it; plain fsync is the fallback
    os.fsync(fd)


def _drop_twin(partial: Path, final: Path) -> None:
    """Remove `partial` when it is a second name of `final`'s file: what a crash between
    the link and the unlink of rename_noreplace leaves. Anything else there is left to
    the retention sweep (it removes stale `.partial` files)."""
    try:
        if os.path.samefile(partial, final):
            partial.unlink()
    except OSError:
        pass  # none there, or not ours to judge: the sweep sees to it


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _digest(path: Path, chunk: int) -> tuple[int, str]:
    """Size and hex sha256 of a file, read back from the filesystem."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])  # hashlib drops the GIL on big updates
            size += n
    return size, digest.hexdigest()


def _unlink_quietly(paths: tuple[Path, ...]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


class _ChunkCopier:
    """Copies one open file into another, a chunk per call, the fastest way allowed."""

    def __init__(self, src: int, dst: int, chunk: int) -> None:
        self.src, self.dst, self.chunk = src, dst, chunk
        self.in_kernel = hasattr(os, "copy_file_range")
        self.buffer: bytearray | None = None

    def step(self) -> int:
        """Copy the next chunk; 0 at the end of the source."""
        if self.in_kernel:
            try:
                # Implicit offsets: both file positions advance, so a switch to
                # read/write later continues exactly where this left off.
                return os.copy_file_range(self.src, self.dst, self.chunk)
            except OSError as exc:
                if exc.errno not in _KERNEL_COPY_UNSUPPORTED:
                    raise
                self.in_kernel = False
        if self.buffer is None:
            self.buffer = bytearray(self.chunk)
        n = os.readv(self.src, [self.buffer])
        view = memoryview(self.buffer)[:n]
        while view:
            view = view[os.write(self.dst, view) :]
        return n


def _os_error(exc: OSError, what: str) -> TransportError:
    name = errno.errorcode.get(exc.errno) if exc.errno else None
    detail = exc.strerror or str(exc)
    return TransportError(
        "mount", f"{what}: {detail}", errno_name=name, exception=type(exc).__name__
    )


class MountTransport:
    """Copies onto a locally mounted NAS root that carries our marker."""

    mode: str = "mount"

    def __init__(
        self,
        root: Path,
        *,
        require_mount_point: bool = True,
        nas_id: str | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        if chunk_bytes < 4096:
            raise ValueError("chunk_bytes must be at least 4096")
        self.root = root
        self.require_mount_point = require_mount_point
        self.nas_id = nas_id
        self.chunk_bytes = chunk_bytes
        self.probe_timeout_s = probe_timeout_s

    def check(self) -> str | None:
        """Why the root is not the NAS right now, or None when it is (blocking)."""
        root = self.root
        if not root.is_dir():
            return f"NAS root {root} does not exist"
        # A plain folder where the mount should be is the local disk (defect 3): refuse it.
        if self.require_mount_point and not os.path.ismount(root):
            return f"NAS root {root} is not a mount point (the share is not mounted)"
        found = read_marker(root)
        if found is None:
            return f"NAS root {root} has no {MARKER_NAME} marker (run `selfheal nas mark`)"
        if self.nas_id is not None and found != self.nas_id:
            return f"NAS root {root} is marked as {found!r}, expected {self.nas_id!r}"
        return None

    async def probe(self) -> ProbeResult:
        """Is the root mounted and marked as our NAS (bounded; never raises)?"""
        try:
            problem = await self._checked(self.check)
        except TransportError as exc:
            return ProbeResult(False, str(exc))
        except Exception as exc:  # a probe reports; it never fails the caller
            return ProbeResult(False, f"probe of {self.root} failed: {exc!r}")
        return ProbeResult(problem is None, problem or f"{self.root} is the marked NAS")

    async def _checked(self, fn: Callable[[], T]) -> T:
        """Run a blocking filesystem call, abandoning it when the mount stops answering."""
        with anyio.move_on_after(self.probe_timeout_s):
            return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        raise TransportError(
            "mount",
            f"NAS root {self.root} did not answer within {self.probe_timeout_s:g}s",
            errno_name="ETIMEDOUT",
            kind="transport.mount.unresponsive",
        )

    async def _require_nas(self) -> None:
        problem = await self._checked(self.check)
        if problem is not None:
            raise TransportError(
                "mount", problem, errno_name="ENODEV", kind="transport.mount.missing"
            )

    def _target(self, remote: PurePosixPath, *, allow_root: bool = False) -> Path:
        return self.root.joinpath(*relative_parts(remote, allow_root=allow_root))

    async def _on_nas(self, remote: PurePosixPath, *, allow_root: bool = False) -> Path:
        path = self._target(remote, allow_root=allow_root)
        await self._require_nas()
        return path

    async def put(
        self,
        local: Path,
        remote: PurePosixPath,
        *,
        sha256: str,
        size: int,
        progress: ProgressFn | None = None,
        manifest: bytes | None = None,
    ) -> Delivery:
        """Copy to `<remote>.partial`, fsync, verify size and sha256, write `manifest` beside
        it, then give the copy its final name without replacing anything (model.Transport)."""
        final = self._target(remote)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        beside = final.with_name(manifest_name(final.name))
        expected = sha256.lower()
        started = time.monotonic()
        await self._require_nas()
        try:
            there = await anyio.to_thread.run_sync(self._already_there, final, expected, size)
        except OSError as exc:
            raise _os_error(exc, f"check {final}") from exc
        if there:
            # A re-delivery (a drain after a crash) finds the verified copy in place.
            await anyio.to_thread.run_sync(_drop_twin, partial, final)
            if manifest is not None:
                await self._os_call(partial_call(self._place, beside, manifest), f"write {beside}")
            if progress is not None:
                progress(size, size)
            return Delivery(self.mode, str(final), size, time.monotonic() - started, True)
        placed = False
        try:
            await self._copy(local, final, partial, size, progress)
            await self._require_nas()  # a share gone mid-copy is ENODEV, not a missing file
            got_size, got_sha = await anyio.to_thread.run_sync(_digest, partial, self.chunk_bytes)
            if got_size != size or got_sha != expected:
                raise TransportError(
                    "mount",
                    f"checksum mismatch for {partial}: expected {size} bytes sha256 {expected}, "
                    f"read back {got_size} bytes sha256 {got_sha}",
                    exception="ChecksumMismatch",
                    kind="integrity",
                )
            # The manifest first: whoever finds the final name finds its manifest too.
            if manifest is not None:
                placed = await anyio.to_thread.run_sync(self._place, beside, manifest)
            await anyio.to_thread.run_sync(self._commit, partial, final)
        except BaseException as exc:
            # Failed, refused or cancelled midway: no unverified copy stays, nor a manifest
            # we wrote for a copy that never got its name.
            await self._discard(partial, *([beside] if placed else []))
            if isinstance(exc, FileExistsError):
                raise name_taken(self.mode, final) from exc
            if isinstance(exc, OSError):
                raise _os_error(exc, f"copy {local} to {final}") from exc
            raise
        return Delivery(self.mode, str(final), size, time.monotonic() - started, True)

    def _already_there(self, final: Path, sha256: str, size: int) -> bool:
        """True when `final` holds this very file; raises when it holds another one."""
        try:
            if final.stat().st_size == size and _digest(final, self.chunk_bytes) == (size, sha256):
                return True
        except FileNotFoundError:
            return False
        raise name_taken(self.mode, final)

    def _place(self, path: Path, data: bytes) -> bool:
        """Write a small file under `path` via `<path>.partial`, fsync, read back and a
        rename that replaces nothing. False when `path` already says the same."""
        try:
            with open(path, "rb") as fh:
                existing: bytes | None = fh.read(_MANIFEST_READ_LIMIT)
        except FileNotFoundError:
            existing = None
        temporary = path.with_name(path.name + PARTIAL_SUFFIX)
        if existing is not None:
            if same_manifest(existing, data):
                _drop_twin(temporary, path)
                return False
            raise name_taken(self.mode, path)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                _durable_sync(fd)
            finally:
                os.close(fd)
            with open(temporary, "rb") as fh:
                if fh.read(len(data) + 1) != data:
                    raise TransportError(
                        "mount", f"{temporary} did not read back as written", kind="integrity"
                    )
            self._commit(temporary, path)
        except FileExistsError as exc:  # another writer got there first
            raise name_taken(self.mode, path) from exc
        finally:
            temporary.unlink(missing_ok=True)  # already gone when the rename happened
        return True

    def _make_parent(self, final: Path) -> None:
        # Folder by folder below the root, never the root itself: should the share vanish,
        # mkdir fails instead of rebuilding the NAS layout on the local disk.
        folder = self.root
        for part in final.relative_to(self.root).parts[:-1]:
            folder = folder / part
            try:
                folder.mkdir(mode=0o755)
            except FileExistsError:
                pass
        if not final.parent.resolve().is_relative_to(self.root.resolve()):
            raise TransportError(
                "mount", f"{final.parent} leads outside the NAS root", kind="config"
            )

    async def _copy(
        self, local: Path, final: Path, partial: Path, size: int, progress: ProgressFn | None
    ) -> None:
        def open_pair() -> tuple[int, int]:
            self._make_parent(final)
            src = os.open(local, os.O_RDONLY)
            try:
                dst = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            except BaseException:
                os.close(src)
                raise
            return src, dst

        src, dst = await anyio.to_thread.run_sync(open_pair)
        try:
            copier = _ChunkCopier(src, dst, self.chunk_bytes)
            done = 0
            # One chunk per thread hop: cancellation lands between chunks, never mid-write.
            while n := await anyio.to_thread.run_sync(copier.step):
                done += n
                if progress is not None:
                    progress(done, size)
            await anyio.to_thread.run_sync(_durable_sync, dst)
        finally:
            os.close(src)
            os.close(dst)

    def _commit(self, partial: Path, final: Path) -> None:
        # The share may have gone away during a long copy; rename only onto the real NAS.
        problem = self.check()
        if problem is not None:
            raise TransportError(
                "mount", problem, errno_name="ENODEV", kind="transport.mount.missing"
            )
        rename_noreplace(partial, final)  # FileExistsError rather than replace a backup
        _fsync_dir(final.parent)

    async def _discard(self, *paths: Path) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_TIMEOUT_S):
            await anyio.to_thread.run_sync(_unlink_quietly, paths, abandon_on_cancel=True)

    async def list_dir(self, remote_dir: PurePosixPath) -> list[RemoteEntry]:
        """Files in a folder relative to the NAS root ([] if it does not exist)."""
        folder = await self._on_nas(remote_dir, allow_root=True)

        def scan() -> list[RemoteEntry]:
            try:
                items = list(os.scandir(folder))
            except FileNotFoundError:
                return []
            found = []
            for item in items:
                if item.is_file(follow_symlinks=False):
                    stat = item.stat(follow_symlinks=False)
                    found.append(RemoteEntry(item.name, stat.st_size, stat.st_mtime))
            return sorted(found, key=lambda e: e.name)

        return await self._os_call(scan, f"list {folder}")

    async def remove(self, remote: PurePosixPath) -> None:
        """Delete one file relative to the NAS root (already gone is fine)."""
        path = await self._on_nas(remote)

        def unlink() -> None:
            path.unlink(missing_ok=True)
            if path.parent.is_dir():
                _fsync_dir(path.parent)

        await self._os_call(unlink, f"remove {path}")

    async def sha256(self, remote: PurePosixPath) -> str:
        """Hex sha256 of a file on the NAS."""
        path = await self._on_nas(remote)
        _, digest = await self._os_call(lambda: _digest(path, self.chunk_bytes), f"hash {path}")
        return digest

    async def read_small(self, remote: PurePosixPath, limit: int = 1 << 20) -> bytes:
        """Read a small file (a manifest) from the NAS; larger than `limit` is refused."""
        path = await self._on_nas(remote)

        def read() -> bytes:
            with open(path, "rb") as fh:
                return fh.read(limit + 1)

        data = await self._os_call(read, f"read {path}")
        if len(data) > limit:
            raise TransportError(
                "mount", f"{path} is larger than {limit} bytes", errno_name="EFBIG"
            )
        return data

    async def read_many(
        self, remotes: list[PurePosixPath], limit: int = 1 << 20
    ) -> dict[PurePosixPath, bytes]:
        """Read several small files (manifests); missing ones are left out."""
        await self._require_nas()
        paths = {remote: self._target(remote) for remote in remotes}

        def read_all() -> dict[PurePosixPath, bytes]:
            found: dict[PurePosixPath, bytes] = {}
            for remote, path in paths.items():
                try:
                    with open(path, "rb") as fh:
                        data = fh.read(limit + 1)
                except FileNotFoundError:
                    continue
                if len(data) <= limit:  # an oversized "manifest" is none of ours
                    found[remote] = data
            return found

        return await self._os_call(read_all, f"read manifests under {self.root}")

    async def fetch(self, remote: PurePosixPath, local: Path, *, sha256: str, size: int) -> None:
        """Copy a NAS file to `local`, verified (model.Transport)."""
        path = await self._on_nas(remote)
        copied = FetchedCopy(self.mode, path, local, sha256=sha256, size=size)

        def copy() -> None:
            try:
                with open(path, "rb") as source:
                    while block := source.read(self.chunk_bytes):
                        copied.write(block)
            except BaseException:
                copied.finish(failed=True)
                raise
            copied.finish()

        await self._os_call(copy, f"fetch {path}")

    async def _os_call(self, fn: Callable[[], T], what: str) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except OSError as exc:
            raise _os_error(exc, what) from exc
