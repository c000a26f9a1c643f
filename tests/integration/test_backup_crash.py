"""A real daemon SIGKILLed in the middle of Redis backups to a marked tmpfs mount (issue 11.5):
no final name without its verified manifest, and the next start finishes what was left."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from selfheal.backup.transports.mount import mark_nas
from selfheal.cli import cli
from selfheal.core.artifacts import (
    MANIFEST_SUFFIX,
    PARTIAL_SUFFIX,
    manifest_name,
    parse_artifact_name,
)
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.mounts import Mounts
from tests.support.nas import ssh_nowhere
from tests.support.servers import RedisServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MIB = 1 << 20
KILL_WAIT_S = 60.0


def fill(server: RedisServer, megabytes: int) -> None:
    """Incompressible data, so every stage of a run takes a moment."""
    client = server.client()
    for i in range(megabytes):
        client.set(f"blob:{i}", os.urandom(MIB))


def finals(folder: Path) -> list[str]:
    """Our artifact names (final names only) in a folder."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    leftovers = (PARTIAL_SUFFIX, MANIFEST_SUFFIX)
    return sorted(n for n in names if parse_artifact_name(n) and not n.endswith(leftovers))


def staged_manifests(folder: Path) -> list[str]:
    """Artifacts the source finished in staging (the manifest is written last)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [n.removesuffix(MANIFEST_SUFFIX) for n in names if n.endswith(MANIFEST_SUFFIX)]


def kill_when(daemon: DaemonProcess, found: Callable[[], list[str]]) -> list[str] | None:
    """SIGKILL the daemon the moment `found()` finds something (polled as fast as we can);
    None if the daemon's runs went idle first (the moment passed unseen)."""
    assert daemon.process is not None
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline:
        hits = found()
        if hits:
            daemon.kill()
            return hits
        if daemon.process.poll() is not None:
            raise AssertionError(f"the daemon exited by itself:\n{daemon.log()}")
    return None


def assert_every_final_name_has_its_manifest(folder: Path) -> None:
    for name in finals(folder):
        manifest_path = folder / manifest_name(name)
        assert manifest_path.is_file(), f"{name} has a final name but no manifest"
        manifest = json.loads(manifest_path.read_text())
        data = (folder / name).read_bytes()
        assert manifest["size"] == len(data), name
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest(), name


def ours_in(folder: Path) -> list[str]:
    """Files of ours (artifact names with any suffix) left in staging or the spool."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if p.is_file() and p.name.startswith("redis-")]


def test_a_daemon_killed_mid_backup_leaves_only_verified_names_and_recovers(
    short_home: Path, daemon_factory: Daemons, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server, megabytes=24)
    nas = mounts.tmpfs("nas", size="512m")
    mark_nas(nas, "three-body")
    config: dict[str, Any] = {
        "backupTransport": ssh_nowhere(short_home),
        "selfheal": {
            "backups": {
                "redis": {"source": redis_server.url, "mountRoot": str(nas)},
                "typesense": {"enabled": False},
            }
        },
    }
    folder = nas / "redis"

    # 1. Killed the moment an artifact's final name appears on the NAS: its manifest is
    #    already there (before the fix the rename came first and the manifest last).
    first = daemon_factory.start(config=config, log_name="daemon-1.log")
    first.call("backup.run", {"target": "redis"})
    assert kill_when(first, lambda: finals(folder)), "the run never reached the NAS"
    assert_every_final_name_has_its_manifest(folder)

    # 2. Killed while a finished artifact waits in staging, i.e. during its delivery.
    second = daemon_factory.start(config=config, log_name="daemon-2.log")
    staging = second.state_dir / "staging"
    staged: list[str] | None = None
    for _ in range(5):  # each run gives one chance to catch the moment
        second.call("backup.run", {"target": "redis"})
        staged = kill_when(second, lambda: staged_manifests(staging))
        if staged:
            break
    assert staged, f"never caught a staged artifact:\n{second.log()}"
    assert_every_final_name_has_its_manifest(folder)

    # 3. The next start delivers the staged artifact, deletes half-made files, and asks
    #    for the interrupted run again, which finds its artifact already made (one
    #    request, one backup): the staged one, delivered from the spool.
    third = daemon_factory.start(config=config, log_name="daemon-3.log")

    def recovered() -> bool:
        runs = third.status()["backups"]["last_runs"]
        return (
            set(staged or []) <= set(finals(folder))
            and ours_in(staging) == []
            and ours_in(third.state_dir / "spool") == []
            and runs.get("redis", {}).get("status") == "delivered"
        )

    try:
        wait_until(recovered, 90, "the staged artifact delivered for the interrupted run")
    except AssertionError as exc:
        state = f"staged {staged}, on the NAS {os.listdir(folder)}, left {ours_in(staging)}"
        raise AssertionError(f"{exc}\n{state}\n--- daemon log ---\n{third.log()}") from None
    log = third.log()
    assert "was interrupted; requesting it again" in log
    assert "was made but not delivered" in log
    assert_every_final_name_has_its_manifest(folder)

    env = third.env()
    runner = CliRunner()
    listed = runner.invoke(cli, ["backup", "list", "redis", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    result = json.loads(listed.output)
    names = [a["name"] for a in result["artifacts"]]
    assert names == finals(folder) and result["ignored"] == []
    for name in names:
        verified = runner.invoke(cli, ["backup", "verify", name, "--json"], env=env)
        assert verified.exit_code == 0 and json.loads(verified.output)["ok"] is True, name
    assert third.stop() == 0
