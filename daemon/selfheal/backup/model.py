"""The contracts between backup sources, transports and the backup service."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from selfheal.core.artifacts import manifest_name
from selfheal.errors import SelfhealError

# Called as bytes move: (bytes done, bytes total).
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Artifact:
    """One verified local backup file plus its manifest, ready to ship."""

    target: str
    name: str  # <target>-<UTC stamp>.<ext>
    path: Path  # the local file
    manifest: dict[str, Any]  # sha256, size, source facts, created_at, ...

    @property
    def sha256(self) -> str:
        """Hex sha256 of the file, from the manifest."""
        return str(self.manifest["sha256"])

    @property
    def size(self) -> int:
        """Size in bytes, from the manifest."""
        return int(self.manifest["size"])

    @property
    def manifest_name(self) -> str:
        """File name of the manifest beside the artifact."""
        return manifest_name(self.name)

    @property
    def manifest_path(self) -> Path:
        """Where the source wrote the manifest: beside the local file."""
        return self.path.with_name(self.manifest_name)

    def manifest_bytes(self) -> bytes:
        """The manifest file's content, as it lands beside the artifact."""
        return (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode()

    @property
    def remote_path(self) -> PurePosixPath:
        """Where it goes, relative to the NAS root: <target>/<name>."""
        return PurePosixPath(self.target) / self.name


@dataclass(frozen=True)
class ProbeResult:
    """Whether a transport can be used right now, and why (not)."""

    ok: bool
    reason: str
    # Set when the NAS answered but refused us (host key, login): not "down", but wrong.
    error: TransportError | None = None


@dataclass(frozen=True)
class Delivery:
    """A file that reached the NAS under its final name and was verified there."""

    mode: str  # "mount" | "ssh"
    remote_path: str  # full path on the NAS side
    bytes: int
    seconds: float
    verified: bool
    resumed_from: int = 0  # bytes an interrupted upload had left, verified and kept


@dataclass(frozen=True)
class RemoteEntry:
    """A file in a target's folder on the NAS."""

    name: str
    size: int
    mtime: float


class TransportError(SelfhealError):
    """A transfer failed; `evidence` feeds the router's classification."""

    def __init__(
        self,
        mode: str,
        message: str,
        *,
        errno_name: str | None = None,
        exception: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.mode = mode
        self.reason = message
        self.errno_name = errno_name
        self.exception = exception
        self.kind = kind
        # Why the other transports did not take the copy either (set by the transfer).
        self.others: tuple[str, ...] = ()
        super().__init__(f"{mode}: {message}")

    def explained(self) -> str:
        """This failure after the other transports' reasons: `mount: …; ssh: …`."""
        return "; ".join((*self.others, str(self)))

    @property
    def evidence(self) -> dict[str, Any]:
        """An evidence item for a self-healing request."""
        item: dict[str, Any] = {"kind": self.kind or f"transport.{self.mode}", "message": str(self)}
        if self.errno_name:
            item["errno"] = self.errno_name
        if self.exception:
            item["exception"] = self.exception
        return item


def same_manifest(a: bytes, b: bytes) -> bool:
    """Whether two manifest files say the same (older ones lack the final newline)."""
    if a == b:
        return True
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def manifest_problem(entry: RemoteEntry, raw: bytes | None) -> tuple[dict[str, Any], str | None]:
    """The manifest beside an artifact, and why it does not vouch for it (None: it does).

    It must name the artifact (when it carries a name), give its size and a sha256.
    Hashing every artifact on every listing would read the whole NAS; `verify` does that.
    """
    if raw is None:
        return {}, "no manifest"
    try:
        manifest = json.loads(raw)
    except ValueError:
        return {}, "manifest is not JSON"
    if not isinstance(manifest, dict):
        return {}, "manifest is not a JSON object"
    named = manifest.get("name", entry.name)
    size = manifest.get("size")
    sha256 = manifest.get("sha256")
    if named != entry.name:
        return manifest, f"manifest names {named!r}"
    if not isinstance(size, int) or isinstance(size, bool) or size != entry.size:
        return manifest, f"manifest size {size!r} differs from the file's {entry.size}"
    if not isinstance(sha256, str) or len(sha256) != 64:
        return manifest, "manifest has no sha256"
    return manifest, None


def name_taken(mode: str, path: object) -> TransportError:
    """A different file already has the final name: a delivery never replaces one.

    Names are unique per run, so this is not a race to retry but a file that is not the
    one we made: an integrity failure for a human to look at (the router escalates it).
    """
    return TransportError(
        mode,
        f"refusing to replace {path}: a different file already has that name",
        errno_name="EEXIST",
        exception="IntegrityError",
        kind="integrity",
    )


class FetchedCopy:
    """A local copy of a NAS file being written: created new (never over a file),
    hashed as it is written, and removed unless it matched what was expected."""

    def __init__(self, mode: str, source: object, local: Path, *, sha256: str, size: int) -> None:
        self.mode = mode
        self.source = source
        self.local = local
        self.expected = (size, sha256.lower())
        self._digest = hashlib.sha256()
        self.count = 0
        self._fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def write(self, data: bytes) -> None:
        """Append a block."""
        self._digest.update(data)
        self.count += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def finish(self, failed: bool = False) -> None:
        """Close; raise (and remove the copy) unless it is the expected file whole."""
        os.close(self._fd)
        found = (self.count, self._digest.hexdigest())
        if failed or found != self.expected:
            self.local.unlink(missing_ok=True)
        if not failed and found != self.expected:
            raise TransportError(
                self.mode,
                f"checksum mismatch fetching {self.source}: {found[0]} bytes sha256 "
                f"{found[1]}, expected {self.expected[0]} bytes sha256 {self.expected[1]}",
                exception="IntegrityError",
                kind="integrity",
            )


class Transport(Protocol):
    """Carries files to the NAS root; a final name only ever holds a verified file,
    is never replaced, and (for artifacts) has its manifest beside it already."""

    mode: str

    async def probe(self) -> ProbeResult:
        """Is the NAS reachable this way right now (cheap, bounded)?"""
        ...

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
        """Copy to `<remote>.partial`, flush, verify size and sha256 there, write `manifest`
        (if given) as `<remote>.manifest.json`, then rename to `remote`.

        Neither rename replaces an existing file (a name already holding this very file
        or manifest counts as delivered). A crash at any point leaves either no final
        name or a verified file whose manifest is already in place.
        """
        ...

    async def list_dir(self, remote_dir: PurePosixPath) -> list[RemoteEntry]:
        """Files in a folder relative to the NAS root ([] if it does not exist)."""
        ...

    async def remove(self, remote: PurePosixPath) -> None:
        """Delete one file relative to the NAS root."""
        ...

    async def sha256(self, remote: PurePosixPath) -> str:
        """Hex sha256 of a file on the NAS."""
        ...

    async def read_small(self, remote: PurePosixPath, limit: int = 1 << 20) -> bytes:
        """Read a small file (a manifest) from the NAS."""
        ...

    async def read_many(
        self, remotes: list[PurePosixPath], limit: int = 1 << 20
    ) -> dict[PurePosixPath, bytes]:
        """Read several small files at once; missing ones are left out of the answer."""
        ...

    async def fetch(self, remote: PurePosixPath, local: Path, *, sha256: str, size: int) -> None:
        """Copy a NAS file to `local` (a new file), verified against `size` and `sha256`;
        on any failure nothing is left at `local`."""
        ...
