"""Backups end to end with real servers: Redis and Typesense to a real mount, SSH fallback,
spool and drain, host-key mismatch, disk full."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from selfheal.backup.model import Artifact, TransportError
from selfheal.backup.plane import SpoolDrainer
from selfheal.backup.recovery import marker_path, write_marker
from selfheal.backup.service import BackupService, run_artifact_key
from selfheal.backup.sources.redis_rdb import RedisSource
from selfheal.backup.transfer import ShipResult
from selfheal.backup.transports.mount import MountTransport, mark_nas
from selfheal.backup.upkeep import scan_folder
from selfheal.bus.lock import RedisLock
from selfheal.bus.streams import Bus
from selfheal.config import Settings, load_config
from selfheal.core.artifacts import artifact_name
from selfheal.core.classify import HARD_CLASSES, classify
from selfheal.core.contracts import Evidence
from selfheal.core.events import BACKUP_COMPLETED, BACKUP_FAILED, BACKUP_REQUESTED, Event, new_event
from selfheal.telemetry import Telemetry
from tests.support.mounts import Mounts
from tests.support.servers import RedisServer
from tests.support.sshd import SshServer, lean_send_from_env
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
            "nas": {
                "remoteRoot": remote_root,
                "spoolDir": str(tmp / "spool"),
                "leanSshSend": lean_send_from_env(),
                "waitForNasSeconds": 0,  # a NAS that is down here stays down: spool at once
            },
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


async def test_a_hard_failure_met_by_the_spool_drain_raises_the_incident_at_once(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server, keys=40, size=100_000)  # ~4 MB of data, incompressible
    root = tmp_path / "nas"
    root.mkdir()
    svc = service(bus, telemetry, settings(tmp_path, redis_server.url, mount_root=root))
    assert (await svc.run("redis", cause("redis"))).status == "spooled"
    mounts.mount_at(root, size="1m")  # the NAS comes back, too full for the artifact
    mark_nas(root, "three-body")
    with pytest.raises(TransportError):
        await svc.drain()
    failed = await events(bus, BACKUP_FAILED)
    assert [f.get("trigger") for f in failed][-1] == "spool-drain"
    found = classify([Evidence.model_validate(e) for e in failed[-1]["evidence"]])
    assert found.failure_class == "resource_exhausted", found
    assert len(await svc.spool().entries()) == 1, "the artifact stays spooled"


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


async def test_two_runs_started_together_give_two_verified_artifacts(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    # Issue 11.6: names had one-second resolution, so the second delivery replaced the first.
    fill(redis_server)
    nas = mounts.tmpfs("nas")
    mark_nas(nas, "three-body")
    cfg = settings(tmp_path, redis_server.url, mount_root=nas)
    svc = service(bus, telemetry, cfg)
    same_moment = datetime.now(UTC).replace(microsecond=0)  # one second, one millisecond
    made: list[Artifact] = []
    shipped: list[ShipResult] = []

    async def run_once() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            source = RedisSource(
                cfg.backups.redis,
                client=client,
                staging_dir=svc.staging_dir(),
                clock=lambda: same_moment,
            )
            artifact = await source.create()
        finally:
            await client.aclose()
        made.append(artifact)
        shipped.append(await svc.transfer("redis").ship(artifact))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_once)
            tg.start_soon(run_once)

    assert [r.status for r in shipped] == ["delivered", "delivered"]
    assert len({a.name for a in made}) == 2
    scan = await scan_folder(MountTransport(nas), "redis")
    assert sorted(a.entry.name for a in scan.artifacts) == sorted(a.name for a in made)
    for artifact in made:
        assert sha256(nas / "redis" / artifact.name) == artifact.sha256
        manifest = json.loads((nas / "redis" / artifact.manifest_name).read_text())
        assert manifest == artifact.manifest


async def test_startup_delivers_what_a_killed_run_staged_and_requests_the_run_again(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    # Issue 11.5: a kill left staged artifacts never delivered, half-made files, no retry.
    fill(redis_server)
    nas = mounts.tmpfs("nas")
    mark_nas(nas, "three-body")
    cfg = settings(tmp_path, redis_server.url, mount_root=nas)
    svc = service(bus, telemetry, cfg)
    staged = await svc.source("redis").create()  # made; then the daemon was killed
    staging = svc.staging_dir()
    unfinished = [
        # killed mid-copy of the raw RDB
        artifact_name("redis", datetime(2025, 1, 1, tzinfo=UTC), "rdb", unique="0000ff")
        + ".unchecked.partial",
        "redis-20250101T000000Z.rdb",  # killed between the file and its manifest
        "redis-20250101T000000Z.rdb.gz.partial",
    ]
    for name in unfinished:
        (staging / name).write_bytes(os.urandom(1000))
    (staging / "notes.txt").write_text("not ours: never touched")
    marker = marker_path(cfg.state_dir, "redis")
    # The killed run's lock outlives it (until its expiry) and would skip the retry.
    dead_lock = RedisLock(bus.client, f"{bus.keys.tag}:lock:backup:redis")
    assert await dead_lock.acquire()
    write_marker(marker, "run-1", "schedule", 0, dead_lock)
    # The killed run had made its artifact (recorded as soon as the snapshot was done).
    await bus.client.set(run_artifact_key(bus, "run-1"), staged.name)

    stranded = await svc.recover()

    assert [e.name for e in stranded] == [staged.name]
    assert sorted(p.name for p in staging.iterdir()) == ["notes.txt"]
    assert not marker.exists()
    [again] = await events(bus, BACKUP_REQUESTED)
    assert again == {"target": "redis", "trigger": "interrupted", "runId": "run-1"}
    assert await dead_lock.holder() is None
    # The same run again: its artifact waits in the spool, so no second one is made.
    rerun = await svc.run("redis", new_event(BACKUP_REQUESTED, again, now_ms=1))
    assert (rerun.status, rerun.artifact) == ("spooled", staged.name)
    assert await svc.drain() == 1
    await svc.report_stranded(stranded)
    [done] = [e for e in await events(bus, BACKUP_COMPLETED) if e.get("fromSpool")]
    assert done["artifact"] == staged.name
    assert await events(bus, BACKUP_FAILED) == [], "delivered: no incident"
    assert sha256(nas / "redis" / staged.name) == staged.sha256
    assert json.loads((nas / "redis" / staged.manifest_name).read_text()) == staged.manifest
    assert await svc.spool().entries() == []
    scan = await scan_folder(MountTransport(nas), "redis")
    assert [a.entry.name for a in scan.artifacts] == [staged.name], "one run, one backup"


async def test_a_run_whose_request_comes_again_after_delivery_makes_no_second_backup(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server)
    nas = mounts.tmpfs("nas")
    mark_nas(nas, "three-body")
    svc = service(bus, telemetry, settings(tmp_path, redis_server.url, mount_root=nas))
    request = cause("redis")
    first = await svc.run("redis", request)
    assert first.status == "delivered"
    # Redelivered (the daemon was killed after the delivery, before the entry's ack).
    again = await svc.run("redis", request)
    assert (again.status, again.artifact) == ("delivered", first.artifact)
    assert again.detail is not None and "was delivered before" in again.detail
    scan = await scan_folder(MountTransport(nas), "redis")
    assert [a.entry.name for a in scan.artifacts] == [first.artifact]
    # Gone from the NAS since (deleted by hand): the same request makes a new backup.
    (nas / "redis" / str(first.artifact)).unlink()
    (nas / "redis" / f"{first.artifact}.manifest.json").unlink()
    third = await svc.run("redis", request)
    assert third.status == "delivered" and third.artifact != first.artifact


async def test_startup_opens_the_incident_when_a_staged_artifact_cannot_be_delivered(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer
) -> None:
    fill(redis_server)
    cfg = settings(tmp_path, redis_server.url, mount_root=tmp_path / "nas-not-mounted")
    svc = service(bus, telemetry, cfg)
    staged = await svc.source("redis").create()
    drainer = SpoolDrainer(lambda: svc, every_s=0.1)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(drainer.run)
            # Recovery ran before readiness: runners start only after it.
            assert drainer.recovered and list(svc.staging_dir().iterdir()) == []
            while not await events(bus, BACKUP_FAILED):  # noqa: ASYNC110 - bounded poll of Redis
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    [failed] = await events(bus, BACKUP_FAILED)
    assert failed["spooled"] == staged.name and failed["target"] == "redis"
    assert "interrupted run" in failed["error"]
    found = classify([Evidence.model_validate(e) for e in failed["evidence"]])
    assert found.failure_class not in HARD_CLASSES, "the router holds and re-checks"
    assert [e.name for e in await svc.spool().entries()] == [staged.name]
    # A restart of the service (a reload) does not sort staging again.
    assert drainer.recovered


async def test_a_run_is_marked_while_it_runs_and_an_interrupted_one_is_retried(
    tmp_path: Path, bus: Bus, telemetry: Telemetry, redis_server: RedisServer, mounts: Mounts
) -> None:
    fill(redis_server)
    nas = mounts.tmpfs("nas")
    mark_nas(nas, "three-body")
    cfg = settings(tmp_path, redis_server.url, mount_root=nas)
    svc = service(bus, telemetry, cfg)
    marker = marker_path(cfg.state_dir, "redis")
    first = cause("redis")
    assert (await svc.run("redis", first)).status == "delivered"
    assert not marker.exists(), "a finished run leaves no marker"

    interrupted = cause("redis")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(svc.run, "redis", interrupted)
            while not await anyio.Path(marker).exists():  # noqa: ASYNC110 - polls a file
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # the run is stopped midway, as by a kill
    assert json.loads(marker.read_text())["runId"] == interrupted.id

    await svc.recover()

    assert not marker.exists()
    [retry] = [e for e in await events(bus, BACKUP_REQUESTED) if e.get("trigger") == "interrupted"]
    assert retry["runId"] == interrupted.id


@pytest.mark.parametrize("lean", [True, False])
async def test_the_lean_ssh_send_setting_reaches_the_ssh_transport(
    bus: Bus, telemetry: Telemetry, tmp_path: Path, lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SELFHEAL_SSH_LEAN_SEND", "1" if lean else "0")
    cfg = settings(tmp_path, "redis://127.0.0.1:1/0", mount_root=tmp_path / "nas")
    [ssh] = [t for t in service(bus, telemetry, cfg).transports("redis") if t.mode == "ssh"]
    assert ssh.lean_send is lean
