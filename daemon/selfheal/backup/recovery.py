"""What a killed daemon leaves behind, found again at start-up.

A run writes a marker when it starts and removes it when it ends: a marker found at
start-up is a run that was interrupted, to be requested again. The staging folder is
private to this daemon and empty between runs: a complete artifact there (file plus a
manifest that matches it) was made but never delivered; everything else of ours there is
an unfinished file of an interrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from selfheal.backup.model import Artifact, RemoteEntry, manifest_problem
from selfheal.backup.spool import write_atomic
from selfheal.bus.lock import RedisLock
from selfheal.core.artifacts import manifest_name, parse_artifact_name

log = logging.getLogger("selfheal.backup.recovery")

RUNS_DIR = "runs"


def marker_path(state_dir: Path, target: str) -> Path:
    """The marker of a target's run in progress."""
    return state_dir / RUNS_DIR / f"{target}.json"


def write_marker(path: Path, run_id: str, trigger: str, attempt: int, lock: RedisLock) -> None:
    """Mark a run as started (atomically: a marker is whole or absent). It names the lock
    the run holds: a killed run's lock lives on until it expires, and would make the
    retry skip as "already running"; the retry releases exactly that holding."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = {
        "runId": run_id,
        "trigger": trigger,
        "attempt": attempt,
        "startedAt": datetime.now(UTC).isoformat(),
        "pid": os.getpid(),
        "lockKey": lock.key,
        "lockToken": lock.token,
    }
    write_atomic(path, json.dumps(record).encode())


def clear_marker(path: Path) -> None:
    """The run ended (delivered, spooled or failed): nothing to retry at start-up."""
    path.unlink(missing_ok=True)


def read_marker(path: Path) -> dict[str, Any] | None:
    """A marker's record; None when there is none. An unreadable one still counts."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"runId": "unknown"}


def staged_artifact_of(name: str) -> str | None:
    """The artifact a staging file belongs to: the longest cut of its name at a dot that
    is one of our artifact names (`x.rdb.gz.partial`, `x.rdb.unchecked.partial`...)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if parse_artifact_name(candidate) is not None:
            return candidate
    return None


@dataclass
class StagingScan:
    """Complete artifacts to deliver, and unfinished files of ours to delete."""

    complete: list[Artifact] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)


def _complete(folder: Path, name: str, names: set[str]) -> Artifact | None:
    """The artifact `name` in `folder` when its manifest is there and matches it."""
    parsed = parse_artifact_name(name)
    if parsed is None or manifest_name(name) not in names:
        return None
    path = folder / name
    try:
        raw = (folder / manifest_name(name)).read_bytes()
        stat = path.stat()
    except OSError:
        return None
    manifest, problem = manifest_problem(RemoteEntry(name, stat.st_size, stat.st_mtime), raw)
    # The spool re-hashes it against the manifest before it is delivered.
    return Artifact(parsed.target, name, path, manifest) if problem is None else None


def scan_staging(folder: Path) -> StagingScan:
    """Sort the staging folder's files (blocking; run in a thread). Files that are not
    ours are left out of both lists."""
    scan = StagingScan()
    try:
        names = {p.name for p in folder.iterdir() if p.is_file()}
    except FileNotFoundError:
        return scan
    kept: set[str] = set()
    for name in sorted(names):
        artifact = _complete(folder, name, names)
        if artifact is not None:
            scan.complete.append(artifact)
            kept |= {name, manifest_name(name)}
    for name in sorted(names - kept):
        if staged_artifact_of(name) is not None:
            scan.unfinished.append(folder / name)
    return scan


def delete_unfinished(paths: list[Path]) -> int:
    """Delete unfinished staging files; returns the bytes freed (blocking)."""
    freed = 0
    for path in paths:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot delete %s left by an interrupted run: %s", path, exc)
            continue
        freed += size
        log.info("deleted %s (%d bytes) left by an interrupted run", path.name, size)
    return freed
