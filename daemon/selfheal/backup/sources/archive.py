"""Archives and copies made from untrusted snapshot trees: streamed, hashed, fsynced, renamed."""

from __future__ import annotations

import errno as errno_module
import gzip
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from selfheal.config.base import Compression
from selfheal.core.artifacts import PARTIAL_SUFFIX, artifact_name, artifact_stamp
from selfheal.errors import SelfhealError

CHUNK = 1 << 20
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
# Waiting for the zstd binary to flush after its input is closed.
ZSTD_EXIT_TIMEOUT_S = 300.0
_ARCHIVE_EXT: dict[str, str] = {"none": "tar", "gzip": "tar.gz", "zstd": "tar.zst"}
_FILE_SUFFIX: dict[str, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def now_utc() -> datetime:
    """The current time, timezone-aware UTC (the sources' default clock)."""
    return datetime.now(UTC)


def new_artifact_name(target: str, created: datetime, ext: str) -> tuple[str, str]:
    """A fresh artifact name and its time part (`<stamp>-<ms>-<random>`).

    Seconds alone are not unique: a second run in the same second would take the first
    run's name. Milliseconds keep names in time order; the random part separates runs
    in one millisecond (the NAS refuses to replace a name in any case).
    """
    unique = secrets.token_hex(3)
    return artifact_name(target, created, ext, unique=unique), artifact_stamp(created, unique)


class SourceError(SelfhealError):
    """Making an artifact failed; `evidence` feeds the router's classifier."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "source",
        errno_name: str | None = None,
        exception: str | None = None,
    ) -> None:
        self.kind = kind
        self.errno_name = errno_name
        self.exception = exception
        super().__init__(message)

    @classmethod
    def from_os_error(cls, what: str, exc: OSError, *, kind: str = "source") -> SourceError:
        """Wrap an OSError, keeping its errno name (ENOSPC, EACCES...) for classification."""
        name = errno_module.errorcode.get(exc.errno) if exc.errno is not None else None
        detail = exc.strerror or str(exc)
        return cls(f"{what}: {detail}", kind=kind, errno_name=name, exception=type(exc).__name__)

    @property
    def evidence(self) -> dict[str, Any]:
        """An evidence item for a self-healing request."""
        item: dict[str, Any] = {"kind": self.kind, "message": str(self)}
        if self.errno_name:
            item["errno"] = self.errno_name
        if self.exception:
            item["exception"] = self.exception
        return item


@dataclass(frozen=True)
class FileDigest:
    """What was written: sha256 and size of the final bytes, plus regular files archived."""

    sha256: str
    size: int
    file_count: int = 1


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def archive_extension(compression: Compression) -> str:
    """The artifact extension of a snapshot archive: tar, tar.gz or tar.zst."""
    return _ARCHIVE_EXT[compression]


def compressed_suffix(compression: Compression) -> str:
    """What compression adds to a single file's name: '', '.gz' or '.zst'."""
    return _FILE_SUFFIX[compression]


def zstandard_module() -> Any | None:
    """The zstandard module when it is installed (else the zstd tool is used)."""
    try:
        import zstandard  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    return zstandard


def require_compression(compression: Compression) -> None:
    """Fail before any work when the chosen compression cannot be done on this host."""
    if compression != "zstd" or zstandard_module() is not None or shutil.which("zstd"):
        return
    raise SourceError(
        "compression 'zstd' needs the 'zstandard' Python module or a 'zstd' binary on PATH, "
        "and neither was found: install one of them or choose compression 'gzip' or 'none'",
        kind="config",
        exception="ConfigError",
    )


class _HashingSink:
    """The last stage: hashes and counts the final bytes as they reach the file."""

    def __init__(self, raw: IO[bytes], path: Path) -> None:
        self.raw = raw
        self.path = path
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        try:
            self.raw.write(data)
        except OSError as exc:
            # Named here so a full disk is not mistaken for a read error upstream.
            raise SourceError.from_os_error(f"cannot write {self.path}", exc) from exc
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()


class _ZstdProcess:
    """Compress through a `zstd` binary; a thread pumps its output into the sink."""

    def __init__(self, binary: str, sink: _HashingSink) -> None:
        self.process = subprocess.Popen(
            [binary, "-q", "-c", f"-{ZSTD_LEVEL}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.error: BaseException | None = None
        self.pump = threading.Thread(target=self._pump, args=(sink,), name="zstd-pump", daemon=True)
        self.pump.start()

    def _pump(self, sink: _HashingSink) -> None:
        assert self.process.stdout is not None
        try:
            while block := self.process.stdout.read(CHUNK):
                sink.write(block)
        except BaseException as exc:  # raised in the caller by write() or close()
            self.error = exc
            # Nobody drains zstd now; kill it so a writer blocked on the pipe wakes up.
            self.process.kill()

    def write(self, data: bytes) -> int:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
        except OSError:
            if self.error is not None:
                raise self.error from None
            raise
        return len(data)

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stderr is not None
        self.process.stdin.close()
        self.pump.join(ZSTD_EXIT_TIMEOUT_S)
        code = self.process.wait(ZSTD_EXIT_TIMEOUT_S)
        message = self.process.stderr.read().decode(errors="replace").strip()
        if self.error is not None:
            raise self.error
        if code != 0:
            raise SourceError(f"zstd exited with {code}: {message[-300:]}", kind="archive")

    def abort(self) -> None:
        self.process.kill()
        self.process.wait()


def _compressor(
    compression: Compression, sink: _HashingSink
) -> tuple[_Writable, Callable[[], None]]:
    """A writer for the uncompressed stream and the call that finishes it."""
    if compression == "none":
        return sink, lambda: None
    if compression == "gzip":
        # mtime=0 keeps the header free of the clock; the manifest records the time.
        gz = gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
        return gz, gz.close
    module = zstandard_module()
    if module is not None:
        writer = module.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(sink, closefd=False)
        return writer, writer.close
    require_compression(compression)
    return _ZstdProcess(shutil.which("zstd") or "zstd", sink), lambda: None


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def write_atomically(
    dest: Path, compression: Compression, produce: Callable[[_Writable], int]
) -> FileDigest:
    """Stream `produce`'s bytes (compressed) into `<dest>.partial`, fsync, rename to `dest`."""
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    zstd_process: _ZstdProcess | None = None
    try:
        with open(partial, "wb") as raw:
            sink = _HashingSink(raw, partial)
            writer, finish = _compressor(compression, sink)
            zstd_process = writer if isinstance(writer, _ZstdProcess) else None
            count = produce(writer)
            (zstd_process.close if zstd_process else finish)()
            zstd_process = None
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, dest)
    except BaseException as exc:
        if zstd_process is not None:
            zstd_process.abort()
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SourceError.from_os_error(f"cannot write {dest}", exc) from exc
        raise
    fsync_dir(dest.parent)
    return FileDigest(sha256=sink.hash.hexdigest(), size=sink.size, file_count=count)


def copy_file(src: Path, dest: Path, compression: Compression = "none") -> FileDigest:
    """Copy one file to `dest` (optionally compressed), hashing the bytes written."""

    def produce(out: _Writable) -> int:
        try:
            with open(src, "rb") as source:
                while block := source.read(CHUNK):
                    out.write(block)
        except OSError as exc:
            # Write errors arrive as SourceError from the sink; an OSError here is a read.
            raise SourceError.from_os_error(f"cannot read {src}", exc) from exc
        return 1

    return write_atomically(dest, compression, produce)


def _refuse(root: Path, relative: str, why: str) -> SourceError:
    return SourceError(
        f"refusing to archive {relative!r} in snapshot {root}: {why}",
        kind="archive.unsafe",
        exception="IntegrityError",
    )


def _check_symlink(real_root: str, path: str, relative: str, root: Path) -> None:
    """A symlink may only point inside the snapshot, by a relative path."""
    target = os.readlink(path)
    if os.path.isabs(target):
        raise _refuse(root, relative, f"symlink to the absolute path {target!r}")
    lexical = os.path.normpath(os.path.join(os.path.dirname(relative), target))
    resolved = os.path.realpath(path)
    inside = resolved == real_root or resolved.startswith(real_root + os.sep)
    if lexical == ".." or lexical.startswith(".." + os.sep) or not inside:
        raise _refuse(root, relative, f"symlink {target!r} points outside the snapshot")


def _walk(root: Path, real_root: str) -> Iterator[str]:
    """Relative paths of every entry, parents first; refuses what must not be archived."""
    pending = [""]
    while pending:
        folder = pending.pop()
        with os.scandir(os.path.join(real_root, folder)) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        for entry in listing:
            relative = os.path.join(folder, entry.name)
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                pending.append(relative)
            elif stat.S_ISLNK(mode):
                _check_symlink(real_root, entry.path, relative, root)
            elif not stat.S_ISREG(mode):
                raise _refuse(root, relative, "not a regular file, folder or symlink (a device?)")
            yield relative


def _add_entries(tar: tarfile.TarFile, root: Path, real_root: str) -> int:
    files = 0
    for relative in _walk(root, real_root):
        path = os.path.join(real_root, relative)
        # lstat again: the tree may change between the walk and this read.
        info = tar.gettarinfo(path, arcname=relative)
        if info.issym():
            _check_symlink(real_root, path, relative, root)
            tar.addfile(info)
        elif info.isdir() or info.islnk():
            files += info.islnk()
            tar.addfile(info)
        elif info.isreg():
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                tar.addfile(info, handle)
            files += 1
        else:
            raise _refuse(root, relative, "not a regular file, folder or symlink (a device?)")
    return files


def write_tree_archive(root: Path, dest: Path, compression: Compression) -> FileDigest:
    """Archive everything under `root` (paths relative to it) into one tar at `dest`."""
    require_compression(compression)
    try:
        real_root = os.path.realpath(root, strict=True)
    except OSError as exc:
        raise SourceError.from_os_error(f"cannot read snapshot {root}", exc) from exc

    def produce(out: _Writable) -> int:
        try:
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                return _add_entries(tar, root, real_root)
        except OSError as exc:
            # Write errors arrive as SourceError from the sink; an OSError here is a read.
            raise SourceError.from_os_error(f"cannot read snapshot {root}", exc) from exc

    try:
        return write_atomically(dest, compression, produce)
    except tarfile.TarError as exc:
        raise SourceError(f"cannot archive {root}: {exc}", kind="archive") from exc


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest as JSON, atomically (`.partial`, fsync, rename)."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()

    def produce(out: _Writable) -> int:
        out.write(data)
        return 1

    write_atomically(path, "none", produce)
