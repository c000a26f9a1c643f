"""NAS and source upkeep after a verified delivery: retention, and which source
snapshots must still be kept because their NAS copy is not verified yet."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from selfheal.backup.model import Artifact, Transport
from selfheal.bus.streams import Bus, as_text
from selfheal.config.schema_backups import RetentionSettings
from selfheal.core.retention import RetentionPolicy, plan_retention


async def apply_retention(
    transport: Transport, target: str, settings: RetentionSettings, *, dry_run: bool = False
) -> dict[str, Any]:
    """Plan retention over our own files in the target's NAS folder, and apply it."""
    entries = await transport.list_dir(PurePosixPath(target))
    plan = plan_retention(
        [e.name for e in entries],
        target,
        RetentionPolicy(
            keep_last=settings.keep_last,
            daily=settings.daily,
            weekly=settings.weekly,
            monthly=settings.monthly,
        ),
        datetime.now(UTC),
    )
    if not dry_run:
        for name in plan.delete:
            await transport.remove(PurePosixPath(target) / name)
    return {"keep": plan.keep, "delete": plan.delete, "reasons": plan.reasons}


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
