"""NAS faults in the middle of a copy, on real mounts, a real sshd and a real daemon:
the share vanishing mid-copy (lazy unmount) and a disk that fills up."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from selfheal.backup.model import Artifact
from selfheal.backup.spool import Spool
from selfheal.backup.transfer import TransferManager
from selfheal.backup.transports.mount import MountTransport, mark_nas
from selfheal.core.artifacts import PARTIAL_SUFFIX, artifact_name, parse_artifact_name
from selfheal.telemetry import Telemetry
from tests.support.daemon import Daemons
from tests.support.http import played_service
from tests.support.mounts import Mounts
from tests.support.nas import ssh_nowhere
from tests.support.servers import RedisServer, wait_until
from tests.support.sshd import SshServer, transport_for

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MIB = 1 << 20


def artifact_in(folder: Path, size: int) -> Artifact:
    from datetime import UTC, datetime

    folder.mkdir(parents=True, exist_ok=True)
    name = artifact_name("redis", datetime.now(UTC), "rdb", unique="00c0de")
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "size": size, "source": "redis"}
    return Artifact("redis", name, folder / name, manifest)


async def test_the_share_vanishing_mid_copy_hands_the_copy_to_ssh(
    mounts: Mounts, sshd: SshServer, tmp_path: Path, telemetry: Telemetry
) -> None:
    nas = mounts.tmpfs("nas", size="256m")
    mark_nas(nas, "three-body")
    artifact = artifact_in(tmp_path / "staging", 96 * MIB)
    cut: list[int] = []

    def lazily_unmount_halfway(done: int, total: int) -> None:
        if done >= total // 2 and not cut:
            cut.append(done)
            # The share goes away under the open file (a NAS reboot, a cable).
            subprocess.run(["umount", "-l", str(nas)], check=True)

    transfer = TransferManager(
        [MountTransport(nas), transport_for(sshd)],
        Spool(tmp_path / "spool"),
        max_attempts=3,
        retry_base_ms=10,
        retry_max_ms=20,
        recovery_window_s=600,
        telemetry=telemetry,
    )
    with anyio.fail_after(120):
        result = await transfer.ship(artifact, progress=lazily_unmount_halfway)
    assert cut, "the copy never reached halfway over the mount"
    assert result.status == "delivered" and result.delivery is not None
    assert result.delivery.mode == "ssh", result
    landed = sshd.remote_root / "redis" / artifact.name
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == artifact.sha256
    assert any("via mount" in e for e in result.errors), result.errors
    # Where the share was, only the empty mount point is left: nothing written there.
    assert [p.name for p in nas.iterdir()] == []


def routed(daemon: Any) -> int:
    """Requests the router has answered: decided, joined to a pending step, or reused."""
    stats = daemon.status()["healing"]["router"]
    return int(stats["decisions"] + stats["joined"] + stats["reused"])


def test_a_full_nas_is_escalated_once_and_nothing_partial_is_left(
    short_home: Path, daemon_factory: Daemons, redis_server: RedisServer, mounts: Mounts
) -> None:
    client = redis_server.client()
    for i in range(8):
        client.set(f"blob:{i}", os.urandom(MIB))
    nas = mounts.tmpfs("nas", size="2m")  # the artifact is ~8 MiB
    mark_nas(nas, "three-body")
    with played_service() as hook:
        config: dict[str, Any] = {
            "backupTransport": ssh_nowhere(short_home),
            "selfheal": {
                "notifiers": {"webhook": {"url": f"{hook.base}/hook"}},
                "backups": {
                    "redis": {"source": redis_server.url, "mountRoot": str(nas)},
                    "typesense": {"enabled": False},
                },
            },
        }
        daemon = daemon_factory.start(config=config)
        daemon.call("backup.run", {"target": "redis"})

        def escalated() -> list[dict[str, Any]]:
            rows = daemon.call("incidents.list", {"limit": 10})["incidents"]
            return [r for r in rows if r["state"] == "escalated"]

        wait_until(escalated, 60, "the full disk escalated")
        wait_until(lambda: len(hook.posts) >= 1, 30, "the notification")
        [incident] = escalated()
        assert incident["lastClass"] == "resource_exhausted", incident
        first = daemon.status()["backups"]["last_runs"]["redis"]
        assert first["status"] == "failed" and "space" in str(first.get("detail")), first
        # Asked again (the next tick): it fails the same way, the incident stays escalated
        # and nobody is notified twice.
        daemon.call("backup.run", {"target": "redis"})
        wait_until(
            lambda: daemon.status()["backups"]["last_runs"]["redis"]["at"] != first["at"],
            60,
            "the second run to end",
        )
        again = daemon.status()["backups"]["last_runs"]["redis"]
        assert again["status"] == "failed" and "space" in str(again.get("detail")), again
        [same] = escalated()
        assert same["incidentId"] == incident["incidentId"]
        wait_until(
            lambda: routed(daemon) >= 2,
            30,
            "the second failure routed (re-escalating a closed incident notifies nobody)",
        )
        assert len(hook.posts) == 1, [p.body for p in hook.posts]
    leftovers = [p.name for p in (nas / "redis").iterdir()] if (nas / "redis").exists() else []
    assert not [n for n in leftovers if parse_artifact_name(n) or n.endswith(PARTIAL_SUFFIX)]
    # The artifact is kept on this machine, whole, to be delivered once there is room.
    staged = [p for p in (daemon.state_dir / "staging").iterdir() if parse_artifact_name(p.name)]
    assert staged, "the artifact was not kept locally"
    for path in staged:
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["sha256"]
    assert daemon.stop() == 0
