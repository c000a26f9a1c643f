"""Backup sources against real servers, each artifact proven by a restore drill."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import redis.asyncio as aioredis

from selfheal.backup.sources.archive import (
    SourceError,
    require_compression,
    write_manifest,
    write_tree_archive,
)
from selfheal.backup.sources.redis_rdb import COARSE_CLOCK_SLACK_US, RedisSource, judge_bgsave
from selfheal.backup.sources.typesense import TypesenseSource
from selfheal.config.base import Compression
from selfheal.config.schema_backups import RedisBackupSettings, TypesenseBackupSettings
from selfheal.core.classify import FailureClass, classify
from selfheal.core.contracts import Evidence
from tests.support.mounts import Mounts
from tests.support.servers import RedisServer, free_port, missing
from tests.support.typesense import TypesenseServer

STAMP = datetime(2026, 11, 27, 11, 0, 0, tzinfo=UTC)
COUNTS = {"books": 50, "films": 7}


# The fixed clock's second, then -<milliseconds>-<random 6 hex>: unique even within a second.
NAME_STAMP = r"20261127T110000Z-000-[0-9a-f]{6}"


def stamp_of(name: str) -> str:
    """The time part of an artifact name: the snapshot folder of the same run."""
    found = re.search(NAME_STAMP, name)
    assert found is not None, name
    return found.group(0)


def fixed_clock() -> datetime:
    return STAMP


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def failure_class(error: SourceError) -> FailureClass:
    return classify([Evidence(**error.evidence)]).failure_class


def finals(staging: Path) -> list[str]:
    """Everything left in staging: a failed run must leave nothing, not even a .partial."""
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def unpack(artifact: Path, into: Path) -> None:
    """Extract a tar, tar.gz or tar.zst the way an operator restoring it would."""
    into.mkdir(parents=True)
    if artifact.name.endswith(".zst"):
        plain = into.parent / "unpacked.tar"
        subprocess.run(["zstd", "-q", "-d", str(artifact), "-o", str(plain)], check=True)
        artifact = plain
    with tarfile.open(artifact) as tar:
        tar.extractall(into, filter="data")


def zstd_or_skip(compression: Compression) -> None:
    if compression == "zstd" and shutil.which("zstd") is None:
        missing("the zstd tool (needed to unpack .zst in the drill)")


# --------------------------------------------------------------------------- Typesense


@pytest.fixture(scope="module")
def typesense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TypesenseServer]:
    """One real Typesense with two collections; snapshots do not change its data."""
    server = TypesenseServer(tmp_path_factory.mktemp("typesense") / "data").start()
    try:
        for name, count in COUNTS.items():
            server.create_collection(name, [{"title": f"{name} {i}", "n": i} for i in range(count)])
        yield server
    finally:
        server.stop()


def typesense_source(
    server: TypesenseServer, tmp_path: Path, *, root: Path | None = None, **settings: Any
) -> TypesenseSource:
    options = {"url": server.url, "api_key": server.api_key, **settings}
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    return TypesenseSource(
        TypesenseBackupSettings(**options),
        snapshot_root=root or tmp_path / "snapshots",
        staging_dir=staging,
        clock=fixed_clock,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("compression", ["gzip", "none", "zstd"])
async def test_typesense_artifact_manifest_and_restore_drill(
    typesense: TypesenseServer, tmp_path: Path, compression: Compression
) -> None:
    zstd_or_skip(compression)
    source = typesense_source(typesense, tmp_path, compression=compression)
    artifact = await source.create()

    ext = {"none": "tar", "gzip": "tar.gz", "zstd": "tar.zst"}[compression]
    assert re.fullmatch(rf"typesense-{NAME_STAMP}\.{re.escape(ext)}", artifact.name)
    assert artifact.path == tmp_path / "staging" / artifact.name
    assert sha256_of(artifact.path) == artifact.sha256
    assert artifact.path.stat().st_size == artifact.size
    assert finals(tmp_path / "staging") == sorted([artifact.name, artifact.manifest_name])
    manifest = json.loads((tmp_path / "staging" / artifact.manifest_name).read_text())
    assert manifest == artifact.manifest
    snapshot = tmp_path / "snapshots" / stamp_of(artifact.name)
    assert manifest["snapshot_path"] == str(snapshot)
    assert manifest["source"] == "typesense"
    assert manifest["created_at"] == "2026-11-27T11:00:00Z"
    assert manifest["server_version"] == typesense.request("GET", "/debug").json()["version"]
    assert manifest["collections"] == [
        {"name": "books", "num_documents": 50},
        {"name": "films", "num_documents": 7},
    ]
    files = [p for p in snapshot.rglob("*") if p.is_file()]
    assert (snapshot / "state" / "meta").is_dir() and manifest["file_count"] == len(files) > 2

    restored = tmp_path / "restored"
    unpack(artifact.path, restored)
    assert sorted(p.relative_to(restored) for p in restored.rglob("*")) == sorted(
        p.relative_to(snapshot) for p in snapshot.rglob("*")
    )
    assert all((restored / p.relative_to(snapshot)).read_bytes() == p.read_bytes() for p in files)
    if compression != "gzip":
        return  # the archives hold the same bytes; one drill (the default format) suffices
    # Restore drill: a fresh server on the unpacked archive has the same documents.
    # (It waits ~10 s to reset the snapshot's old raft peer before it serves.)
    drill = TypesenseServer(restored).start()
    try:
        assert drill.document_counts() == COUNTS
        hits = drill.request(
            "GET", "/collections/books/documents/search", params={"q": "books", "query_by": "title"}
        ).json()
        assert hits["found"] == 50
    finally:
        drill.stop()


@pytest.mark.anyio
async def test_typesense_falls_back_when_the_root_is_unusable(
    typesense: TypesenseServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the snapshot root's parent should be")
    fallback = tmp_path / "fallback"
    source = typesense_source(
        typesense, tmp_path, root=blocker / "snaps", snapshot_fallback_root=str(fallback)
    )
    artifact = await source.create()
    snapshot = fallback / stamp_of(artifact.name)
    assert artifact.manifest["snapshot_path"] == str(snapshot)
    assert (snapshot / "state" / "meta").is_dir()
    assert not (blocker.parent / "snaps").exists()


@pytest.mark.anyio
async def test_typesense_writing_nothing_is_a_failure_not_an_empty_backup(
    typesense: TypesenseServer, tmp_path: Path
) -> None:
    # Typesense answers 201 for a path it cannot write (here /proc): the original's trap.
    source = typesense_source(typesense, tmp_path, root=Path("/proc"), compression="gzip")
    with pytest.raises(SourceError, match="no snapshot files staged") as caught:
        await source.create()
    assert failure_class(caught.value) is FailureClass.CONFIG
    assert finals(tmp_path / "staging") == []

    # With an unusable fallback too, both reasons are reported.
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    both = typesense_source(
        typesense, tmp_path, root=Path("/proc"), snapshot_fallback_root=str(blocker / "x")
    )
    with pytest.raises(SourceError) as caught:
        await both.create()
    assert "no snapshot files staged" in str(caught.value)
    assert f"snapshot root {blocker / 'x'} is unusable" in str(caught.value)
    assert caught.value.errno_name == "ENOTDIR"


@pytest.mark.anyio
async def test_typesense_rejected_key_is_auth_and_never_shown(
    typesense: TypesenseServer, tmp_path: Path
) -> None:
    secret = "wrong-key-5f0c9a"
    source = typesense_source(typesense, tmp_path, api_key=secret)
    with pytest.raises(SourceError, match="permission denied") as caught:
        await source.create()
    assert secret not in str(caught.value) and secret not in json.dumps(caught.value.evidence)
    assert failure_class(caught.value) is FailureClass.AUTH
    assert not (tmp_path / "snapshots").exists() or not any((tmp_path / "snapshots").iterdir())


@pytest.mark.anyio
async def test_typesense_unreachable_is_transient(tmp_path: Path) -> None:
    settings = TypesenseBackupSettings(url=f"http://127.0.0.1:{free_port()}", api_key="k")
    source = TypesenseSource(settings, snapshot_root=tmp_path / "s", staging_dir=tmp_path)
    with pytest.raises(SourceError, match="cannot reach Typesense") as caught:
        await source.create()
    assert failure_class(caught.value) is FailureClass.TRANSIENT_TRANSPORT


@pytest.mark.anyio
async def test_prune_keeps_the_newest_and_every_protected_snapshot(tmp_path: Path) -> None:
    root, fallback, outside = tmp_path / "root", tmp_path / "fallback", tmp_path / "outside"
    stamps = [f"202611{day:02d}T030000Z" for day in range(20, 26)]
    for index, stamp in enumerate(stamps):
        folder = (root if index % 2 else fallback) / stamp / "state"
        folder.mkdir(parents=True)
        (folder / "meta").write_text(stamp)
    (outside / "precious").mkdir(parents=True)
    (root / "notes").mkdir()  # not ours: no stamp name
    (root / "20261101T000000Z").symlink_to(outside)  # a stamp name, but a symlink
    settings = TypesenseBackupSettings(snapshot_retention_count=2, snapshot_fallback_root=fallback)
    source = TypesenseSource(settings, snapshot_root=root, staging_dir=tmp_path)
    protected = fallback / stamps[0]  # e.g. not yet verified on the NAS
    deleted = await source.prune_snapshots([protected])

    survivors = {p.name for r in (root, fallback) for p in r.iterdir()}
    assert survivors == {stamps[0], stamps[4], stamps[5], "notes", "20261101T000000Z"}
    assert sorted(p.name for p in deleted) == stamps[1:4]
    assert (outside / "precious").is_dir()
    assert await source.prune_snapshots([]) == [protected]


# --------------------------------------------------------------------------- archives


def snapshot_tree(root: Path) -> Path:
    (root / "state" / "meta").mkdir(parents=True)
    (root / "state" / "meta" / "raft_meta").write_bytes(b"meta")
    data = root / "state" / "snapshot" / "snapshot_1" / "db_snapshot"
    data.mkdir(parents=True)
    (data / "000001.sst").write_bytes(os.urandom(300_000))
    os.link(data / "000001.sst", data / "000002.sst")  # RocksDB checkpoints hard-link
    (root / "state" / "empty").mkdir()
    (root / "state" / "current").symlink_to("snapshot/snapshot_1")
    return root


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_archive_round_trip(tmp_path: Path, compression: Compression) -> None:
    zstd_or_skip(compression)
    tree = snapshot_tree(tmp_path / "tree")
    dest = tmp_path / "out" / "a.tar"
    dest.parent.mkdir()
    digest = write_tree_archive(tree, dest, compression)
    assert digest.sha256 == sha256_of(dest) and digest.size == dest.stat().st_size
    assert digest.file_count == 3
    assert finals(dest.parent) == ["a.tar"]
    if compression == "gzip":
        assert gzip.decompress(dest.read_bytes())[257:262] == b"ustar"
    unpack(dest.rename(dest.with_suffix({"zstd": ".zst"}.get(compression, ".tar"))), tmp_path / "x")
    out = tmp_path / "x"
    for path in tree.rglob("*"):
        twin = out / path.relative_to(tree)
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path)
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes()
        else:
            assert twin.is_dir()


@pytest.mark.parametrize(
    ("entry", "make", "why"),
    [
        ("state/evil", lambda p: p.symlink_to("../../outside"), "points outside the snapshot"),
        ("state/abs", lambda p: p.symlink_to(p.parent / "meta"), "absolute path"),
        ("state/deep/up", lambda p: p.symlink_to("../../.."), "points outside the snapshot"),
        ("state/pipe", lambda p: os.mkfifo(p), "a device"),
    ],
)
def test_archive_refuses_untrusted_entries(tmp_path: Path, entry: str, make: Any, why: str) -> None:
    tree = snapshot_tree(tmp_path / "tree")
    (tree / entry).parent.mkdir(parents=True, exist_ok=True)
    make(tree / entry)
    dest = tmp_path / "out" / "a.tar.gz"
    dest.parent.mkdir()
    with pytest.raises(SourceError, match=why) as caught:
        write_tree_archive(tree, dest, "gzip")
    assert repr(entry) in str(caught.value)
    assert finals(dest.parent) == []


@pytest.fixture
def tiny_disk(tmp_path: Path, mounts: Mounts) -> Path:
    """A real 1 MiB tmpfs: a full disk without pretending."""
    return mounts.mount_at(tmp_path / "tiny", "1m")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_a_full_disk_is_reported_as_such_and_leaves_nothing(
    tmp_path: Path, tiny_disk: Path, compression: Compression
) -> None:
    zstd_or_skip(compression)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.sst").write_bytes(os.urandom(3 << 20))  # random: does not compress
    with pytest.raises(SourceError, match="No space left on device") as caught:
        write_tree_archive(tree, tiny_disk / "a.tar", compression)
    assert caught.value.errno_name == "ENOSPC"
    assert failure_class(caught.value) is FailureClass.RESOURCE_EXHAUSTED
    assert finals(tiny_disk) == []


def test_zstd_without_module_or_binary_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # the optional module is not there
    monkeypatch.setenv("PATH", str(tmp_path))  # nor is a zstd binary on this PATH
    with pytest.raises(SourceError, match="'zstandard' Python module or a 'zstd' binary"):
        require_compression("zstd")
    with pytest.raises(SourceError, match="zstandard"):
        write_tree_archive(snapshot_tree(tmp_path / "t"), tmp_path / "a.tar.zst", "zstd")
    assert not list(tmp_path.glob("a.tar.zst*"))


def test_write_manifest_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.manifest.json"
    write_manifest(path, {"sha256": "a", "size": 1})
    write_manifest(path, {"sha256": "b", "size": 2})
    assert json.loads(path.read_text()) == {"sha256": "b", "size": 2}
    assert finals(tmp_path) == ["x.tar.manifest.json"]


# --------------------------------------------------------------------------- Redis


def fill_redis(server: RedisServer) -> dict[int, dict[str, Any]]:
    """Keys of several types in db 0 and db 1; returns what each db must hold."""
    expected: dict[int, dict[str, Any]] = {}
    for db, count in ((0, 6), (1, 4)):
        client = redis.Redis(host="127.0.0.1", port=server.port, db=db, decode_responses=True)
        values: dict[str, Any] = {f"s{db}:{i}": f"value {db}/{i}" for i in range(count)}
        client.mset(values)
        client.hset(f"h{db}", mapping={"a": "1", "b": "2"})
        client.rpush(f"l{db}", "x", "y", "z")
        client.set(f"ttl{db}", "expires later", ex=3600)
        values |= {f"h{db}": {"a": "1", "b": "2"}, f"l{db}": ["x", "y", "z"]}
        values[f"ttl{db}"] = "expires later"
        expected[db] = values
        client.close()
    return expected


def read_back(port: int, db: int, keys: dict[str, Any]) -> dict[str, Any]:
    client = redis.Redis(host="127.0.0.1", port=port, db=db, decode_responses=True)
    try:
        found: dict[str, Any] = {}
        for key in keys:
            kind = client.type(key)
            if kind == "hash":
                found[key] = client.hgetall(key)
            elif kind == "list":
                found[key] = client.lrange(key, 0, -1)
            else:
                found[key] = client.get(key)
        return found
    finally:
        client.close()


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


def redis_source(
    client: aioredis.Redis, tmp_path: Path, **settings: Any
) -> tuple[RedisSource, Path]:
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    options = {"bgsave_timeout_seconds": 30, **settings}
    source = RedisSource(
        RedisBackupSettings(**options), client=client, staging_dir=staging, clock=fixed_clock
    )
    return source, staging


def persistence(server: RedisServer) -> dict[str, Any]:
    return dict(server.client().info("persistence"))


@pytest.mark.anyio
async def test_redis_artifact_manifest_and_restore_drill(
    redis_server: RedisServer, aclient: aioredis.Redis, tmp_path: Path
) -> None:
    expected = fill_redis(redis_server)
    before = persistence(redis_server)["rdb_last_save_time"]
    source, staging = redis_source(aclient, tmp_path)
    artifact = await source.create()

    assert re.fullmatch(rf"redis-{NAME_STAMP}\.rdb", artifact.name)
    assert sha256_of(artifact.path) == artifact.sha256 == artifact.manifest["rdb_sha256"]
    assert finals(staging) == sorted([artifact.name, artifact.manifest_name])
    manifest = json.loads((staging / artifact.manifest_name).read_text())
    assert manifest == artifact.manifest
    assert manifest["keys_by_db"] == {"db0": 9, "db1": 7}
    assert manifest["dbsize"] == 9
    assert manifest["redis_version"] == redis_server.client().info("server")["redis_version"]
    assert manifest["lastsave"] > before
    assert manifest["lastsave"] == persistence(redis_server)["rdb_last_save_time"]
    assert manifest["rdb_check"] == "ok"
    assert manifest["created_at"] == "2026-11-27T11:00:00Z"

    # Restore drill: a fresh redis-server loads the artifact as its dump.rdb.
    restore_dir = tmp_path / "restore"
    restore_dir.mkdir()
    shutil.copyfile(artifact.path, restore_dir / "dump.rdb")
    drill = RedisServer(restore_dir).start()
    try:
        for db, values in expected.items():
            client = redis.Redis(host="127.0.0.1", port=drill.port, db=db)
            assert client.dbsize() == len(values)
            assert 0 < int(client.ttl(f"ttl{db}")) <= 3600
            client.close()
            assert read_back(drill.port, db, values) == values
    finally:
        drill.stop(kill=True)


@pytest.mark.anyio
async def test_redis_gzip_round_trip_with_text_client(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    fill_redis(redis_server)
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        source, _ = redis_source(client, tmp_path, compression="gzip")
        artifact = await source.create()
    finally:
        await client.aclose()
    assert re.fullmatch(rf"redis-{NAME_STAMP}\.rdb\.gz", artifact.name)
    assert sha256_of(artifact.path) == artifact.sha256
    raw = gzip.decompress(artifact.path.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == artifact.manifest["rdb_sha256"]
    assert raw == (redis_server.directory / "dump.rdb").read_bytes()
    assert raw.startswith(b"REDIS")


@pytest.mark.anyio
async def test_redis_failed_bgsave_is_an_error_and_leaves_nothing(
    redis_server: RedisServer, aclient: aioredis.Redis, tmp_path: Path
) -> None:
    fill_redis(redis_server)
    # The forked child cannot create its temp file in /proc, so the save fails.
    redis_server.client().config_set("dir", "/proc")
    source, staging = redis_source(aclient, tmp_path)
    started = time.monotonic()
    with pytest.raises(SourceError, match="rdb_last_bgsave_status:err"):
        await source.create()
    assert time.monotonic() - started < 10, "a failed save is reported, not waited out"
    assert finals(staging) == []


def kill_save_children(server: RedisServer) -> None:
    """End the forked BGSAVE child of our own test server (by pid, nothing else)."""
    assert server.process is not None
    children = psutil.Process(server.process.pid).children()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass  # the save finished first
    psutil.wait_procs(children, timeout=10)


@pytest.mark.anyio
async def test_redis_unchanged_lastsave_is_failure(
    redis_server: RedisServer, aclient: aioredis.Redis, tmp_path: Path
) -> None:
    fill_redis(redis_server)
    before = persistence(redis_server)["rdb_last_save_time"]
    # Each key now takes a second to save: the BGSAVE cannot finish within the timeout.
    redis_server.client().config_set("rdb-key-save-delay", 1_000_000)
    source, staging = redis_source(aclient, tmp_path, bgsave_timeout_seconds=1)
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="timed out after 1s waiting for BGSAVE") as caught:
            await source.create()
    finally:
        kill_save_children(redis_server)
    assert time.monotonic() - started < 5
    assert f"LASTSAVE still {before}" in str(caught.value)
    assert failure_class(caught.value) is FailureClass.TRANSIENT_TRANSPORT
    assert finals(staging) == []


@pytest.mark.anyio
async def test_redis_waits_for_a_save_in_progress_then_saves_again(
    redis_server: RedisServer, aclient: aioredis.Redis, tmp_path: Path
) -> None:
    fill_redis(redis_server)
    sync = redis_server.client()
    # Someone else's save, already running: ~2.4 s for 16 keys, longer than the up to
    # 1 s our source may wait for Redis's clock to pass the previous LASTSAVE.
    sync.config_set("rdb-key-save-delay", 150_000)
    forks = int(sync.info("stats")["total_forks"])
    sync.bgsave(schedule=False)
    assert persistence(redis_server)["rdb_bgsave_in_progress"] == 1
    sync.config_set("rdb-key-save-delay", 0)  # the running child keeps its own copy
    source, _ = redis_source(aclient, tmp_path)
    artifact = await source.create()
    # Ours forked after the other one ended: accepting its LASTSAVE would be one fork.
    assert int(sync.info("stats")["total_forks"]) == forks + 2
    assert artifact.manifest["lastsave"] == persistence(redis_server)["rdb_last_save_time"]


@pytest.mark.anyio
async def test_redis_saves_back_to_back_each_prove_themselves(
    redis_server: RedisServer, aclient: aioredis.Redis, tmp_path: Path
) -> None:
    """Redis stamps LASTSAVE from a coarse clock that may still show the old second just
    after TIME has turned: a save must start clearly past the turn to prove itself."""
    source, _ = redis_source(aclient, tmp_path)
    seconds, _ = await aclient.time()
    await source._wait_past_second(int(seconds))
    now_s, now_us = await aclient.time()
    assert int(now_s) * 1_000_000 + int(now_us) >= (int(seconds) + 1) * 1_000_000 + (
        COARSE_CLOCK_SLACK_US
    )
    stamps = [(await source.create()).manifest["lastsave"] for _ in range(3)]
    assert stamps == sorted(set(stamps)), stamps


class ConfigLessRedis(RedisServer):
    """A redis-server whose CONFIG command is disabled, as hardened installs do."""

    def arguments(self) -> list[str]:
        return [*super().arguments(), "--rename-command", "CONFIG", ""]


@pytest.mark.anyio
async def test_redis_without_config_command_needs_rdb_path(tmp_path: Path) -> None:
    server = ConfigLessRedis(tmp_path / "redis").start()
    client = aioredis.Redis(host="127.0.0.1", port=server.port)
    try:
        fill_redis(server)
        source, staging = redis_source(client, tmp_path)
        with pytest.raises(SourceError, match=r"set backups\.redis\.rdbPath") as caught:
            await source.create()
        assert "CONFIG GET is disabled or renamed" in str(caught.value)
        assert failure_class(caught.value) is FailureClass.CONFIG
        assert finals(staging) == []

        configured, _ = redis_source(client, tmp_path, rdb_path=str(server.directory / "dump.rdb"))
        artifact = await configured.create()
        assert artifact.manifest["rdb_source_path"] == str(server.directory / "dump.rdb")
        assert artifact.manifest["keys_by_db"] == {"db0": 9, "db1": 7}
    finally:
        await client.aclose()
        server.stop(kill=True)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "age_s", "match", "expected_class"),
    [
        (b"REDIS0009\xfa\x09garbage-not-an-rdb", 0, "redis-check-rdb rejected", "integrity"),
        (b"hello world", 0, "is not an RDB file", "integrity"),
        (b"REDIS0009", 3600, "older than the BGSAVE", "config"),
    ],
)
async def test_redis_copy_must_be_a_fresh_valid_rdb(
    redis_server: RedisServer,
    aclient: aioredis.Redis,
    tmp_path: Path,
    content: bytes,
    age_s: int,
    match: str,
    expected_class: str,
) -> None:
    fill_redis(redis_server)
    wrong = tmp_path / "wrong.rdb"
    wrong.write_bytes(content)
    if age_s:
        old = time.time() - age_s
        os.utime(wrong, (old, old))
    source, staging = redis_source(aclient, tmp_path, rdb_path=str(wrong))
    with pytest.raises(SourceError, match=match) as caught:
        await source.create()
    assert failure_class(caught.value) is FailureClass(expected_class)
    assert finals(staging) == []


def test_judge_bgsave_demands_a_newer_lastsave() -> None:
    ok = {"rdb_bgsave_in_progress": 0, "rdb_last_bgsave_status": "ok"}
    assert judge_bgsave(100, {**ok, "rdb_last_save_time": 101}, seen_running=True).done
    unchanged = judge_bgsave(100, {**ok, "rdb_last_save_time": 100}, seen_running=True)
    assert not unchanged.done and unchanged.failed and "did not advance" in unchanged.failed
    # Not yet seen running (a scheduled save): unchanged just means "not yet".
    waiting = judge_bgsave(100, {**ok, "rdb_last_save_time": 100}, seen_running=False)
    assert not waiting.done and waiting.failed is None
    running = judge_bgsave(100, {**ok, "rdb_bgsave_in_progress": 1}, seen_running=False)
    assert running.running and not running.done
    err = {"rdb_bgsave_in_progress": 0, "rdb_last_bgsave_status": "err", "rdb_last_save_time": 90}
    assert judge_bgsave(100, err, seen_running=True).failed
    # A stale 'err' from an older save does not fail a save that has not run yet.
    assert judge_bgsave(100, err, seen_running=False).failed is None


@pytest.mark.anyio
async def test_the_restore_drill_serves_a_typesense_artifact_from_the_nas(
    typesense: TypesenseServer, tmp_path: Path
) -> None:
    """`backup drill typesense`: fetched from the NAS, unpacked, served by a throwaway
    typesense-server, its documents counted against the manifest."""
    from selfheal.backup.drill import drill
    from selfheal.backup.transports.mount import MountTransport, mark_nas

    artifact = await typesense_source(typesense, tmp_path, compression="gzip").create()
    nas = tmp_path / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    transport = MountTransport(nas, require_mount_point=False)
    await transport.put(
        artifact.path,
        artifact.remote_path,
        sha256=artifact.sha256,
        size=artifact.size,
        manifest=artifact.manifest_bytes(),
    )
    result = await drill(transport, "typesense", scratch=tmp_path / "drill")
    assert result.ok, result.detail
    assert result.found == COUNTS == result.expected
    assert not list((tmp_path / "drill").iterdir())
