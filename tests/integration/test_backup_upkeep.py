"""Retention and listing on a real NAS folder (tmpfs mount, sshd): only artifacts whose
manifest vouches for them count; abandoned uploads of our own names are swept."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from selfheal.backup.model import Transport
from selfheal.backup.transports.mount import MARKER_NAME, MountTransport, mark_nas
from selfheal.backup.upkeep import STALE_AFTER_S, apply_retention, scan_folder
from selfheal.config.schema_backups import RetentionSettings
from selfheal.core.artifacts import artifact_name, manifest_name
from tests.support.mounts import Mounts
from tests.support.sshd import SshServer, transport_for

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)
KEEP_ONE = RetentionSettings(keep_last=1, daily=0, weekly=0, monthly=0)


def name(hours_ago: int, unique: str = "abcdef") -> str:
    return artifact_name("redis", NOW - timedelta(hours=hours_ago), "rdb", unique=unique)


def backup(folder: Path, artifact: str, *, manifest: dict[str, object] | None = None) -> None:
    """An artifact with the manifest a delivery writes beside it (or the one given)."""
    data = os.urandom(1000)
    (folder / artifact).write_bytes(data)
    if manifest is None:
        manifest = {"name": artifact, "size": 1000, "sha256": hashlib.sha256(data).hexdigest()}
    (folder / manifest_name(artifact)).write_text(json.dumps(manifest))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


class Folder:
    """A target folder as crashes and old versions left it."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.good = [name(30, "000001"), name(20, "000002"), name(10, "000003")]
        for artifact in self.good:
            backup(folder, artifact)
        # Killed between rename and manifest (issue 11.5): the newest, but unverified.
        self.no_manifest = name(1, "000004")
        (folder / self.no_manifest).write_bytes(os.urandom(500))
        self.wrong_size = name(2, "000005")
        backup(folder, self.wrong_size, manifest={"size": 1, "sha256": "0" * 64})
        self.other_name = name(3, "000006")
        backup(folder, self.other_name, manifest={"name": "x", "size": 1000, "sha256": "0" * 64})
        # Abandoned uploads, one killed after its manifest was placed; and a live one.
        self.stale = f"{name(5, '000007')}.partial"
        (folder / self.stale).write_bytes(b"x" * 300)
        (folder / manifest_name(name(5, "000007"))).write_text("{}")
        self.stale_manifest = f"{manifest_name(name(6, '000008'))}.partial"
        (folder / self.stale_manifest).write_text("{")
        for stale in (self.stale, self.stale_manifest):
            age(folder / stale, STALE_AFTER_S + 60)
        self.fresh = f"{name(0, '000009')}.partial"
        (folder / self.fresh).write_bytes(b"y" * 300)
        # Not ours: never touched, however old.
        self.foreign = ["notes.txt", "redis-old.rdb.partial", f"{name(7, '00000a')}.tmp"]
        for other in self.foreign:
            (folder / other).write_text("someone else's")
            age(folder / other, 10 * STALE_AFTER_S)


async def check_retention(
    transport: Transport, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = Folder(root / "redis")

    scan = await scan_folder(transport, "redis")
    assert [a.entry.name for a in scan.artifacts] == folder.good
    assert scan.ignored == {
        folder.no_manifest: "no manifest",
        folder.wrong_size: "manifest size 1 differs from the file's 1000",
        folder.other_name: "manifest names 'x'",
    }
    orphan = manifest_name(name(5, "000007"))
    assert scan.stale == sorted([folder.stale, orphan, folder.stale_manifest])

    dry = await apply_retention(transport, "redis", KEEP_ONE, dry_run=True)
    assert set(dry["keep"]) == {folder.good[-1], manifest_name(folder.good[-1])}
    assert {p.name for p in (root / "redis").iterdir()} >= set(dry["delete"])

    assert not [r for r in caplog.records if "retention deleted" in r.getMessage()]
    with caplog.at_level(logging.INFO, logger="selfheal.backup.retention"):
        plan = await apply_retention(transport, "redis", KEEP_ONE)
    logged = [r.getMessage() for r in caplog.records if "retention deleted" in r.getMessage()]
    # One line per deleted file, naming it, the transport and the rule.
    assert len(logged) == len(plan["delete"]) > 0
    for deleted in plan["delete"]:
        [line] = [m for m in logged if f"redis/{deleted} via {transport.mode}:" in m]
        assert line.endswith(plan["reasons"][deleted])

    # The newest verified backup is kept; the manifest-less newer file did not push it out.
    assert plan["keep"] == [folder.good[-1], manifest_name(folder.good[-1])]
    assert plan["ignored"] == scan.ignored
    assert plan["reasons"][folder.stale] == "unfinished upload, untouched for over 1 h"
    left = {p.name for p in (root / "redis").iterdir()}
    expected = {
        folder.good[-1],
        manifest_name(folder.good[-1]),
        *scan.ignored,  # reported, never deleted: a human decides
        manifest_name(folder.wrong_size),
        manifest_name(folder.other_name),
        folder.fresh,  # maybe still being written
        *folder.foreign,
    }
    assert left == expected


async def test_retention_counts_only_what_a_manifest_vouches_for_on_a_mount(
    mounts: Mounts, caplog: pytest.LogCaptureFixture
) -> None:
    root = mounts.tmpfs("nas")
    mark_nas(root, "nas")
    await check_retention(MountTransport(root), root, caplog)
    assert MARKER_NAME in {p.name for p in root.iterdir()}


async def test_retention_counts_only_what_a_manifest_vouches_for_over_ssh(
    sshd: SshServer, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(60):
        await check_retention(transport_for(sshd), sshd.remote_root, caplog)
