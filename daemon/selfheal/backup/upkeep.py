"""NAS and source upkeep after a verified delivery: which artifacts on the NAS count,
retention over those, abandoned uploads swept, and which source snapshots must still be
kept because their NAS copy is not verified yet."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

from selfheal.backup.model import Artifact, RemoteEntry, Transport, manifest_problem
from selfheal.bus.streams import Bus, as_text
from selfheal.config.schema_backups import RetentionSettings
from selfheal.core.artifacts import manifest_name, parse_artifact_name, unfinished_artifact
from selfheal.core.retention import RetentionPolicy, plan_retention

log = logging.getLogger("selfheal.backup.retention")

# An upload writes its .partial all the time and publishes it within moments of the last
# write: one untouched this long was abandoned (a killed daemon, a lost link).
STALE_AFTER_S: Final = 3600.0


def stale_leftovers(
    entries: Collection[RemoteEntry], target: str, now: float, stale_after_s: float
) -> list[str]:
    """Abandoned uploads of our own names in a target's folder, and the manifests written
    for copies that never got their final name. Nothing else is ever named."""
    names = {e.name for e in entries}
    stale: list[str] = []
    for entry in entries:
        artifact = unfinished_artifact(entry.name)
        parsed = parse_artifact_name(artifact) if artifact else None
        if artifact is None or parsed is None or parsed.target != target:
            continue
        if now - entry.mtime < stale_after_s:
            continue  # maybe still being written
        stale.append(entry.name)
        orphan = manifest_name(artifact)
        if artifact not in names and orphan in names and orphan not in stale:
            stale.append(orphan)
    return sorted(stale)


@dataclass(frozen=True)
class Listed:
    """An artifact on the NAS with a manifest that vouches for it."""

    entry: RemoteEntry
    manifest: dict[str, Any]


@dataclass(frozen=True)
class FolderScan:
    """What a target's NAS folder holds, as retention and `backup list` see it."""

    artifacts: list[Listed] = field(default_factory=list)  # oldest name first
    ignored: dict[str, str] = field(default_factory=dict)  # our names no manifest vouches for
    stale: list[str] = field(default_factory=list)  # abandoned uploads, to sweep


async def scan_folder(
    transport: Transport,
    target: str,
    *,
    now: float | None = None,
    stale_after_s: float = STALE_AFTER_S,
) -> FolderScan:
    """Our artifacts in the target's folder that a present, matching manifest vouches for."""
    folder = PurePosixPath(target)
    entries = await transport.list_dir(folder)
    ours = [
        e
        for e in entries
        if (parsed := parse_artifact_name(e.name)) is not None and parsed.target == target
    ]
    manifests = await transport.read_many([folder / manifest_name(e.name) for e in ours])
    scan = FolderScan(
        stale=stale_leftovers(entries, target, time.time() if now is None else now, stale_after_s)
    )
    for entry in ours:
        manifest, problem = manifest_problem(
            entry, manifests.get(folder / manifest_name(entry.name))
        )
        if problem is None:
            scan.artifacts.append(Listed(entry, manifest))
        else:
            scan.ignored[entry.name] = problem
    return scan


async def apply_retention(
    transport: Transport, target: str, settings: RetentionSettings, *, dry_run: bool = False
) -> dict[str, Any]:
    """Plan retention over our verified artifacts in the target's NAS folder, sweep
    abandoned uploads, and apply it. An artifact without a matching manifest is neither
    counted (it must not push out a good backup) nor deleted: it is reported."""
    scan = await scan_folder(transport, target)
    names = [a.entry.name for a in scan.artifacts]
    plan = plan_retention(
        [*names, *map(manifest_name, names)],
        target,
        RetentionPolicy(
            keep_last=settings.keep_last,
            daily=settings.daily,
            weekly=settings.weekly,
            monthly=settings.monthly,
        ),
        datetime.now(UTC),
    )
    reasons = dict(plan.reasons)
    hours = STALE_AFTER_S / 3600
    for name in scan.stale:
        reasons[name] = f"unfinished upload, untouched for over {hours:g} h"
    delete = [*plan.delete, *scan.stale]
    if not dry_run:
        for name in delete:
            await transport.remove(PurePosixPath(target) / name)
            log.info(
                "retention deleted %s/%s via %s: %s", target, name, transport.mode, reasons[name]
            )
    return {"keep": plan.keep, "delete": delete, "reasons": reasons, "ignored": scan.ignored}


class UnverifiedSnapshots:
    """Source snapshots whose NAS copy is not verified yet (kept in Redis: survives
    restarts, shared by daemons); pruning never touches them."""

    def __init__(self, bus: Bus, target: str) -> None:
        self.bus = bus
        self.key = f"{bus.keys.tag}:unverified-snapshots:{target}"

    async def remember(self, artifact: Artifact) -> None:
        """The artifact's snapshot must stay until its NAS copy is verified."""
        snapshot = artifact.manifest.get("snapshot_path")
        if snapshot:
            await self.bus.client.hset(self.key, artifact.name, str(snapshot))

    async def forget(self, artifact: Artifact) -> None:
        """The artifact is verified on the NAS: its snapshot may be pruned."""
        await self.bus.client.hdel(self.key, artifact.name)

    async def paths(self) -> list[Path]:
        """Snapshot folders still waiting for a verified NAS copy."""
        raw = await self.bus.client.hvals(self.key)
        return [Path(as_text(v)) for v in raw]
