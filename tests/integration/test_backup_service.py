"""Backups end to end with real servers: Redis and Typesense to a real mount, SSH fallback,
spool and drain, host-key mismatch, disk full."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from selfheal.backup.service import BackupService
from selfheal.backup.transports.mount import mark_nas
from selfheal.bus.streams import Bus
from selfheal.config import Settings, load_config
from selfheal.core.classify import HARD_CLASSES, classify
from selfheal.core.contracts import Evidence
from selfheal.core.events import BACKUP_COMPLETED, BACKUP_FAILED, BACKUP_REQUESTED, Event, new_event
from selfheal.telemetry import Telemetry
from tests.support.mounts import Mounts
from tests.support.servers import RedisServer
from tests.support.sshd import SshServer
from tests.support.typesense import TypesenseServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def fill(server: RedisServer, keys: int = 50, size: int = 100) -> None:
    client = server.client()
    for i in range(keys):
        client.set(f"key:{i}", os.urandom(size))
    client.select(3)
    client.set("other-db", "x")


def settings(
    tmp: Path,
    redis_url: str,
    *,
    mount_root: Path,
    ssh: SshServer | None = None,
    known_hosts: Path | None = None,
    require_mount_point: bool = True,
    typesense: TypesenseServer | None = None,
) -> Settings:
    transport: dict[str, Any] = {"nasMaxAttempts": 2, "nasRetryBaseMs": 10, "nasRetryMaxMs": 20}
    if ssh is not None:
        transport.update(nasSshHost=ssh.host, nasSshFlags=ssh.flags(known_hosts=known_hosts))
        remote_root = str(ssh.remote_root)
    else:  # nothing listens on port 1: SSH is down (and configured correctly otherwise)
        empty = tmp / "known_hosts"
        empty.touch()
        transport.update(
            nasSshHost="nobody@127.0.0.1",
            nasSshFlags=f"-o BatchMode=yes -o ConnectTimeout=2 -p 1 -o UserKnownHostsFile={empty}",
        )
        remote_root = "/srv/nas-nowhere"
    backups: dict[str, Any] = {
        "redis": {
            "source": redis_url,
            "mountRoot": str(mount_root),
            "requireMountPoint": require_mount_point,
        },
        "typesense": {
            "enabled": typesense is not None,
            "mountRoot": str(mount_root),
            "requireMountPoint": require_mount_point,
        },
    }
    if typesense is not None:
        backups["typesense"].update(
            url=typesense.url,
            apiKey=typesense.api_key,
            snapshotRoot=str(tmp / "snapshots"),
            compression="gzip",
        )
    doc = {
        "backupTransport": transport,
        "selfheal": {
            "stateDir": str(tmp / "state"),
            "nas": {"remoteRoot": remote_root, "spoolDir": str(tmp / "spool")},
            "backups": backups,
        },
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(doc))
    return load_config(path, {"HOME": str(tmp)}).settings


def service(bus: Bus, telemetry: Telemetry, cfg: Settings) -> BackupService:
    return BackupService(
        bus=bus,
        source_client=lambda: aioredis.Redis.from_url(cfg.backups.redis.source),
        telemetry=telemetry,
        settings=lambda: cfg,
    )


def cause(target: str) -> Event:
    return new_event(BACKUP_REQUESTED, {"target": target}, now_ms=int(time.time() * 1000))


async def events(bus: Bus, name: str) -> list[dict[str, Any]]:
    raw = await bus.client.xrange(bus.keys.stream(name))
    return [Event.from_wire(fields).data for _id, fields in raw]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ours(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if not p.name.endswith(".partial"))


async def test_redis_backup_lands_verified_on_a_real_mount(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server)
    nas = mounts.tmpfs("nas")
    mark_nas(nas, "three-body")
    cfg = settings(tmp_path, redis_server.url, mount_root=nas)
    outcome = await service(bus, telemetry, cfg).run("redis", cause("redis"))
    assert outcome.status == "delivered", outcome
    [artifact, manifest] = ours(nas / "redis")
    assert manifest.name == artifact.name + ".manifest.json"
    meta = json.loads(manifest.read_text())
    assert meta["sha256"] == sha256(artifact) and meta["size"] == artifact.stat().st_size
    [done] = await events(bus, BACKUP_COMPLETED)
    assert done["transportMode"] == "mount" and done["artifact"] == artifact.name
    # Restore drill: a fresh redis-server on the artifact has the same keys.
    restore = tmp_path / "restore"
    restore.mkdir()
    (restore / "dump.rdb").write_bytes(artifact.read_bytes())
    fresh = RedisServer(restore, dbfilename="dump.rdb").start()
    try:
        # (The same server is the bus here: compare the data keys, not DBSIZE.)
        restored = fresh.client()
        assert len(restored.keys("key:*")) == 50
        assert restored.get("key:7") == redis_server.client().get("key:7")
        assert sync_redis.Redis(port=fresh.port, db=3).get("other-db") == b"x"
    finally:
        fresh.stop(kill=True)


async def test_missing_mount_falls_back_to_ssh_and_writes_nothing_locally(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, sshd: SshServer
) -> None:
    fill(redis_server)
    plain = tmp_path / "Volumes" / "three-body"  # where the mount should be; it is not mounted
    plain.mkdir(parents=True)
    mark_nas(plain, "three-body")
    cfg = settings(tmp_path, redis_server.url, mount_root=plain, ssh=sshd)
    outcome = await service(bus, telemetry, cfg).run("redis", cause("redis"))
    assert outcome.status == "delivered", outcome
    assert not (plain / "redis").exists(), "never written into the plain local folder"
    [artifact, manifest] = ours(sshd.remote_root / "redis")
    assert json.loads(manifest.read_text())["sha256"] == sha256(artifact)
    [done] = await events(bus, BACKUP_COMPLETED)
    assert done["transportMode"] == "ssh"


async def test_both_down_spools_then_drains_when_the_mount_returns(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server)
    root = tmp_path / "nas"
    root.mkdir()
    cfg = settings(tmp_path, redis_server.url, mount_root=root)
    svc = service(bus, telemetry, cfg)
    outcome = await svc.run("redis", cause("redis"))
    assert outcome.status == "spooled", "a spooled backup is not a success"
    [failed] = await events(bus, BACKUP_FAILED)
    assert failed["spooled"] == outcome.artifact
    assert (
        classify([Evidence.model_validate(e) for e in failed["evidence"]]).failure_class
        not in HARD_CLASSES
    ), "the router holds and re-checks; it does not escalate"
    assert await events(bus, BACKUP_COMPLETED) == []
    assert len(await svc.spool().entries()) == 1

    mounts.mount_at(root)  # the NAS comes back
    mark_nas(root, "three-body")
    assert await svc.drain() == 1
    assert await svc.spool().entries() == []
    [artifact, _manifest] = ours(root / "redis")
    assert artifact.name == outcome.artifact
    [done] = await events(bus, BACKUP_COMPLETED)
    assert done["fromSpool"] is True


async def test_host_key_mismatch_is_a_hard_failure_and_nothing_is_written(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, sshd: SshServer
) -> None:
    fill(redis_server)
    cfg = settings(
        tmp_path,
        redis_server.url,
        mount_root=tmp_path / "absent",
        ssh=sshd,
        known_hosts=sshd.mismatched_known_hosts,
    )
    outcome = await service(bus, telemetry, cfg).run("redis", cause("redis"))
    assert outcome.status == "failed"
    [failed] = await events(bus, BACKUP_FAILED)
    found = classify([Evidence.model_validate(e) for e in failed["evidence"]])
    assert found.failure_class == "auth", found
    assert not (sshd.remote_root / "redis").exists() or ours(sshd.remote_root / "redis") == []


async def test_disk_full_on_the_mount_is_a_hard_failure(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server, keys=40, size=100_000)  # ~4 MB of data, incompressible
    nas = mounts.tmpfs("tiny", size="1m")
    mark_nas(nas, "tiny")
    cfg = settings(tmp_path, redis_server.url, mount_root=nas)
    outcome = await service(bus, telemetry, cfg).run("redis", cause("redis"))
    assert outcome.status == "failed"
    [failed] = await events(bus, BACKUP_FAILED)
    found = classify([Evidence.model_validate(e) for e in failed["evidence"]])
    assert found.failure_class == "resource_exhausted", found
    assert not (nas / "redis").exists() or [p for p in (nas / "redis").iterdir()] == []


async def test_typesense_backup_to_a_mount_and_restore_drill(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    server = TypesenseServer(tmp_path / "ts-data").start()
    try:
        server.create_collection(
            "books", [{"id": str(i), "title": f"b{i}", "n": i} for i in range(30)]
        )
        nas = mounts.tmpfs("nas")
        mark_nas(nas, "three-body")
        cfg = settings(tmp_path, redis_server.url, mount_root=nas, typesense=server)
        outcome = await service(bus, telemetry, cfg).run("typesense", cause("typesense"))
        assert outcome.status == "delivered", outcome
        [artifact, manifest] = ours(nas / "typesense")
        meta = json.loads(manifest.read_text())
        assert meta["sha256"] == sha256(artifact)
        assert {c["name"]: c["num_documents"] for c in meta["collections"]} == {"books": 30}
    finally:
        server.stop(kill=True)


async def test_both_down_spools_then_drains_when_ssh_returns(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, sshd: SshServer
) -> None:
    fill(redis_server)
    cfg = settings(tmp_path, redis_server.url, mount_root=tmp_path / "absent", ssh=sshd)
    svc = service(bus, telemetry, cfg)
    sshd.stop()  # the NAS is unreachable both ways (its known_hosts stays valid)
    outcome = await svc.run("redis", cause("redis"))
    assert outcome.status == "spooled", outcome
    assert [e["spooled"] for e in await events(bus, BACKUP_FAILED)] == [outcome.artifact]

    sshd.start()  # SSH comes back
    assert await svc.drain() == 1
    assert await svc.spool().entries() == []
    [artifact, manifest] = ours(sshd.remote_root / "redis")
    assert artifact.name == outcome.artifact
    assert json.loads(manifest.read_text())["sha256"] == sha256(artifact)
    [done] = await events(bus, BACKUP_COMPLETED)
    assert done["fromSpool"] is True and done["transportMode"] == "ssh"
