"""The spool: a durable on-disk queue of artifacts waiting for a transport to the NAS."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio

from selfheal.backup.model import Artifact
from selfheal.core.artifacts import MANIFEST_SUFFIX, validate_target
from selfheal.errors import SelfhealError

log = logging.getLogger(__name__)

ENTRY_FILE: Final = "entry.json"  # written last: its presence is what makes an entry real
# An entry is built under this prefix and renamed into place once whole: a scan never
# sees half an entry, and a crash leaves a folder `recover_incoming` knows what to do with.
INCOMING_PREFIX: Final = ".incoming-"
# An entry is removed by renaming it here first (one atomic step un-lists it whole), then
# deleting it: a crash halfway leaves a folder that start-up deletes.
REMOVING_PREFIX: Final = ".removing-"
CORRUPT_DIR: Final = "corrupt"
_CHUNK: Final = 8 << 20


class SpoolEntryCorrupt(SelfhealError):
    """A spooled file no longer matches its checksum; it was moved aside to `corrupt/`."""

    def __init__(self, entry_id: str, reason: str, moved_to: Path | None) -> None:
        self.entry_id = entry_id
        self.reason = reason
        self.moved_to = moved_to
        where = f"; moved to {moved_to}" if moved_to else ""
        super().__init__(f"spool entry {entry_id} is corrupt: {reason}{where}")


@dataclass(frozen=True)
class SpoolEntry:
    """One artifact waiting in the spool."""

    id: str
    target: str
    name: str
    sha256: str
    size: int
    spooled_at: datetime
    incident_id: str | None
    directory: Path

    @property
    def file(self) -> Path:
        """The spooled artifact file."""
        return self.directory / self.name

    @property
    def manifest_file(self) -> Path:
        """The artifact's manifest, stored beside it."""
        return self.directory / (self.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class SpoolScan:
    """What a look at the spool found: good entries, oldest first, and problems."""

    entries: list[SpoolEntry]
    problems: list[str]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync, rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy a file, fsync it, and return the sha256 of the bytes written."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _move_in(artifact: Artifact, stored: Path) -> bool:
    """Rename the file into the spool (True), or copy it across filesystems (False)."""
    try:
        os.rename(artifact.path, stored)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    else:
        _fsync_path(stored)  # the producer may never have flushed it
        return True
    # Another filesystem: copy, and keep the original until the entry is committed.
    staging = stored.with_name(f".{stored.name}.copy")
    if _copy_hashing(artifact.path, staging) != artifact.sha256.lower():
        raise ValueError(f"{artifact.path} does not match its manifest sha256")
    os.rename(staging, stored)
    return False


def _safe_name(name: str) -> str:
    if not name or name != Path(name).name or name.startswith(".") or name == ENTRY_FILE:
        raise ValueError(f"artifact name {name!r} is not a plain file name")
    return name


def _parse_entry(directory: Path, raw: Any) -> SpoolEntry:
    if not isinstance(raw, dict):
        raise ValueError("entry is not a JSON object")
    incident = raw.get("incidentId")
    size = raw["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"bad size {size!r}")
    return SpoolEntry(
        id=directory.name,
        target=validate_target(str(raw["target"])),
        name=_safe_name(str(raw["name"])),
        sha256=str(raw["sha256"]).lower(),
        size=size,
        spooled_at=datetime.fromisoformat(str(raw["spooledAt"])),
        incident_id=str(incident) if incident is not None else None,
        directory=directory,
    )


class Spool:
    """Artifacts parked on local disk until the NAS answers again; survives restarts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _ensure(self) -> None:
        # Backups may hold secrets: only our user may look into the spool.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.directory.stat().st_mode & 0o077:
            self.directory.chmod(0o700)

    async def add(self, artifact: Artifact, *, incident_id: str | None = None) -> SpoolEntry:
        """Move the artifact file into the spool with its manifest; atomic per entry."""
        return await anyio.to_thread.run_sync(self._add, artifact, incident_id)

    def _add(self, artifact: Artifact, incident_id: str | None) -> SpoolEntry:
        validate_target(artifact.target)
        name = _safe_name(artifact.name)
        self._ensure()
        now = datetime.now(UTC)
        entry_id = f"{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"
        building = self.directory / f"{INCOMING_PREFIX}{entry_id}"
        directory = self.directory / entry_id
        building.mkdir(mode=0o700)
        stored = building / name
        moved = False
        try:
            moved = _move_in(artifact, stored)
            manifest = json.dumps(artifact.manifest, indent=2, sort_keys=True).encode()
            write_atomic(building / (name + MANIFEST_SUFFIX), manifest)
            record: dict[str, Any] = {
                "target": artifact.target,
                "name": name,
                "sha256": artifact.sha256.lower(),
                "size": artifact.size,
                "spooledAt": now.isoformat(),
            }
            if incident_id is not None:
                record["incidentId"] = incident_id
            write_atomic(building / ENTRY_FILE, json.dumps(record, indent=2).encode())
            _fsync_path(building)
            os.rename(building, directory)
            _fsync_path(self.directory)
        except BaseException:
            # Never lose the artifact: put it back where it was before dropping the entry.
            if moved and stored.exists():
                os.rename(stored, artifact.path)
            shutil.rmtree(building, ignore_errors=True)
            raise
        if not moved:
            artifact.path.unlink()
        # The spool keeps its own manifest copy; the producer's one beside the file goes.
        artifact.manifest_path.unlink(missing_ok=True)
        _fsync_path(artifact.path.parent)
        log.info("spooled %s as %s", artifact.name, entry_id)
        return _parse_entry(directory, record)

    async def recover_incoming(self, staging: Path) -> list[str]:
        """Put back what an add interrupted by a crash had moved: the artifact (and, if
        the producer's one is gone, the manifest) return to `staging`, where start-up
        finds them complete and spools them again; finish removals a crash cut short.
        Returns the artifacts put back."""
        return await anyio.to_thread.run_sync(self._recover_incoming, staging)

    def _recover_incoming(self, staging: Path) -> list[str]:
        if not self.directory.is_dir():
            return []
        returned: list[str] = []
        for child in sorted(self.directory.iterdir()):
            if child.name.startswith(REMOVING_PREFIX) and child.is_dir():
                # Delivered and un-listed already; the crash only cut the deletion short.
                shutil.rmtree(child, ignore_errors=True)
                log.info("spool %s: finished removing %s", self.directory, child.name)
                continue
            if not (child.name.startswith(INCOMING_PREFIX) and child.is_dir()):
                continue
            for path in sorted(child.iterdir()):
                if path.name == ENTRY_FILE or path.name.startswith("."):
                    continue  # the record, or a cross-filesystem copy that never finished
                back = staging / path.name
                if back.exists():
                    continue  # the producer's own copy is still there
                staging.mkdir(mode=0o700, parents=True, exist_ok=True)
                shutil.move(path, back)
                _fsync_path(back)
                if not path.name.endswith(MANIFEST_SUFFIX):
                    returned.append(path.name)
            _fsync_path(staging)
            shutil.rmtree(child, ignore_errors=True)
            log.warning(
                "spool %s: an interrupted add left %s; put %s back in %s",
                self.directory,
                child.name,
                ", ".join(returned) or "nothing",
                staging,
            )
        return returned

    async def scan(self) -> SpoolScan:
        """Every complete entry, oldest first, and a note on each broken one."""
        return await anyio.to_thread.run_sync(self._scan)

    def _scan(self) -> SpoolScan:
        self._ensure()
        entries: list[SpoolEntry] = []
        problems: list[str] = []
        for child in sorted(self.directory.iterdir()):
            if child.name == CORRUPT_DIR or child.name.startswith(".") or not child.is_dir():
                continue
            entry_file = child / ENTRY_FILE
            try:
                raw = json.loads(entry_file.read_bytes())
                entries.append(_parse_entry(child, raw))
            except FileNotFoundError:
                # An add that did not finish (a crash): its file may be the only copy, keep it.
                problems.append(f"{child.name}: incomplete entry (no {ENTRY_FILE})")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{child.name}: unreadable {ENTRY_FILE}: {exc}")
        for problem in problems:
            log.warning("spool %s: %s", self.directory, problem)
        entries.sort(key=lambda e: (e.spooled_at, e.id))
        return SpoolScan(entries, problems)

    async def entries(self) -> list[SpoolEntry]:
        """Complete entries, oldest first; broken ones are logged and skipped."""
        return (await self.scan()).entries

    async def artifact(self, entry: SpoolEntry) -> Artifact:
        """The entry as an Artifact, after re-checking the spooled file's sha256."""
        return await anyio.to_thread.run_sync(self._artifact, entry)

    def _artifact(self, entry: SpoolEntry) -> Artifact:
        try:
            manifest = json.loads(entry.manifest_file.read_bytes())
            if not isinstance(manifest, dict):
                raise ValueError("manifest is not a JSON object")
            size, digest = _file_digest(entry.file)
        except (OSError, ValueError) as exc:
            raise SpoolEntryCorrupt(entry.id, str(exc), self._move_aside(entry)) from exc
        if (size, digest) != (entry.size, entry.sha256):
            reason = f"file: {size} bytes, sha256 {digest}; entry: {entry.size}, {entry.sha256}"
            raise SpoolEntryCorrupt(entry.id, reason, self._move_aside(entry))
        if str(manifest.get("sha256", "")).lower() != entry.sha256:
            raise SpoolEntryCorrupt(entry.id, "manifest sha256 differs", self._move_aside(entry))
        return Artifact(entry.target, entry.name, entry.file, manifest)

    def _move_aside(self, entry: SpoolEntry) -> Path | None:
        corrupt = self.directory / CORRUPT_DIR
        try:
            corrupt.mkdir(mode=0o700, exist_ok=True)
            destination = corrupt / entry.id
            os.rename(entry.directory, destination)
            _fsync_path(self.directory)
        except OSError as exc:
            log.error("spool: could not move corrupt entry %s aside: %s", entry.id, exc)
            return None
        log.error("spool: entry %s failed its checksum; moved to %s", entry.id, destination)
        return destination

    async def remove(self, entry: SpoolEntry) -> None:
        """Drop an entry whose artifact reached the NAS verified."""
        await anyio.to_thread.run_sync(self._remove, entry)

    def _remove(self, entry: SpoolEntry) -> None:
        # Un-list it whole first: a crash after this leaves a `.removing-` folder (deleted
        # at the next start), never a half-deleted entry under its listed name.
        removing = self.directory / f"{REMOVING_PREFIX}{entry.id}"
        try:
            os.rename(entry.directory, removing)
        except FileNotFoundError:
            return  # already removed
        _fsync_path(self.directory)
        shutil.rmtree(removing)
        _fsync_path(self.directory)
