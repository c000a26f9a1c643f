"""Transport selection, in-copy retries, the spool and its drain, on real mounts and folders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from selfheal.backup.model import Artifact, Delivery, TransportError
from selfheal.backup.spool import (
    CORRUPT_DIR,
    REMOVING_PREFIX,
    Spool,
    SpoolEntry,
    SpoolEntryCorrupt,
)
from selfheal.backup.transfer import ShipResult, TransferManager
from selfheal.backup.transports.mount import MARKER_NAME, MountTransport, mark_nas
from selfheal.backup.transports.ssh import SshTransport
from selfheal.core.artifacts import artifact_name
from selfheal.core.ssh_flags import parse_ssh_flags
from selfheal.spanfile import read_spans
from selfheal.telemetry import Telemetry
from tests.support.mounts import Mounts
from tests.support.servers import free_port
from tests.support.sshd import SshServer, transport_for

pytestmark = pytest.mark.anyio

MIB = 1 << 20


class FakeTime:
    """Injected time: sleeps are recorded and advance a clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make_artifact(folder: Path, size: int = 200_000, *, second: int = 0) -> Artifact:
    """A real artifact file with its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    created = datetime(2025, 1, 1, 3, 30, second, tzinfo=UTC)
    name = artifact_name("redis", created, "rdb", unique=f"{second:06x}")
    data = os.urandom(size)
    (folder / name).write_bytes(data)
    manifest = {"sha256": hashlib.sha256(data).hexdigest(), "size": size, "source": "redis"}
    return Artifact("redis", name, folder / name, manifest)


def manager(
    telemetry: Telemetry,
    transports: list[MountTransport],
    spool: Spool,
    time: FakeTime,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **overrides: float,
) -> TransferManager:
    options: dict[str, float] = {
        "max_attempts": 4,
        "retry_base_ms": 100,
        "retry_max_ms": 250,
        "recovery_window_s": 3600.0,
        "nas_wait_s": 0.0,
    }
    options.update(overrides)
    return TransferManager(
        transports,
        spool,
        max_attempts=int(options["max_attempts"]),
        retry_base_ms=int(options["retry_base_ms"]),
        retry_max_ms=int(options["retry_max_ms"]),
        recovery_window_s=options["recovery_window_s"],
        nas_wait_s=options["nas_wait_s"],
        telemetry=telemetry,
        sleep=sleep or time.sleep,
        jitter=lambda: 0.5,
        clock=time.clock,
    )


def marked_tmpfs(mounts: Mounts, name: str, size: str = "64m") -> Path:
    root = mounts.tmpfs(name, size)
    mark_nas(root, name)
    return root


def down_mount(tmp_path: Path) -> MountTransport:
    """Where the share should be mounted there is only a local folder (marked, even)."""
    root = tmp_path / "Volumes" / "three-body"
    root.mkdir(parents=True, exist_ok=True)
    mark_nas(root, "three-body")
    return MountTransport(root)


def obstruct(root: Path, artifact: Artifact) -> Path:
    """A folder squatting on the .partial name: every put there fails (EISDIR), transiently."""
    blocker = root / "redis" / (artifact.name + ".partial")
    blocker.mkdir(parents=True)
    return blocker


def assert_on_nas(root: Path, artifact: Artifact, original: bytes) -> None:
    folder = root / "redis"
    assert (folder / artifact.name).read_bytes() == original
    manifest = json.loads((folder / artifact.manifest_name).read_text())
    assert manifest == artifact.manifest


async def test_mount_down_ships_through_the_other_transport(
    mounts: Mounts, tmp_path: Path, telemetry: Telemetry
) -> None:
    other = marked_tmpfs(mounts, "nas-b")
    artifact = make_artifact(tmp_path / "out")
    original = artifact.path.read_bytes()
    time = FakeTime()
    spool = Spool(tmp_path / "spool")
    transfer = manager(telemetry, [down_mount(tmp_path), MountTransport(other)], spool, time)

    result = await transfer.ship(artifact)

    assert result.status == "delivered" and result.attempts == 1 and time.sleeps == []
    assert result.delivery is not None and result.delivery.remote_path.startswith(str(other))
    assert any("not a mount point" in e for e in result.errors)
    assert_on_nas(other, artifact, original)
    assert [p.name for p in (tmp_path / "Volumes" / "three-body").iterdir()] == [MARKER_NAME]
    assert await spool.entries() == []


async def test_both_down_spools_then_drain_delivers(
    mounts: Mounts, tmp_path: Path, telemetry: Telemetry
) -> None:
    artifact = make_artifact(tmp_path / "out")
    original = artifact.path.read_bytes()
    primary = down_mount(tmp_path)
    spool = Spool(tmp_path / "spool")
    transfer = manager(telemetry, [primary, down_mount(tmp_path / "b")], spool, FakeTime())

    result = await transfer.ship(artifact, incident_id="backup:redis:1")

    assert result.status == "spooled" and result.delivery is None and result.attempts == 0
    assert result.spool_entry is not None and result.spool_entry.incident_id == "backup:redis:1"
    assert result.why().startswith("mount: ") and "not a mount point" in result.why()
    assert not artifact.path.exists()  # moved into the spool, not copied
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    delivered: list[tuple[SpoolEntry, Delivery]] = []

    async def on_delivered(entry: SpoolEntry, delivery: Delivery) -> None:
        delivered.append((entry, delivery))

    assert await transfer.drain(on_delivered) == 0  # still down: nothing happens
    assert len(await spool.entries()) == 1

    mounts.mount_at(primary.root)  # the share comes back where it belongs
    mark_nas(primary.root, "three-body")
    assert await transfer.drain(on_delivered) == 1

    assert_on_nas(primary.root, artifact, original)
    assert [(e.name, d.verified) for e, d in delivered] == [(artifact.name, True)]
    assert await spool.entries() == []
    assert not result.spool_entry.directory.exists()
    # Two drains: the first found no transport, the second delivered, inside its span.
    assert telemetry.force_flush()
    spans = read_spans(telemetry.span_file)
    drains = [s for s in spans if s["name"] == "selfheal.backup.spool_drain"]
    assert [s["attributes"]["selfheal.delivered"] for s in drains] == [0, 1]
    assert all(s["attributes"]["selfheal.entries"] == 1 for s in drains)
    [attempt] = [s for s in spans if s["name"] == "selfheal.backup.transfer"]
    assert attempt["parent_id"] == drains[1]["context"]["span_id"]
    assert attempt["attributes"]["selfheal.from_spool"] is True
    assert attempt["attributes"]["selfheal.bytes"] == artifact.size


async def test_retries_follow_the_formula_switch_and_stop_at_max_attempts(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    nas_a, nas_b = marked_tmpfs(mounts, "nas-a"), marked_tmpfs(mounts, "nas-b")
    artifact = make_artifact(tmp_path / "out")
    obstruct(nas_a, artifact)
    obstruct(nas_b, artifact)
    time = FakeTime()
    spool = Spool(tmp_path / "spool")
    a, b = MountTransport(nas_a), MountTransport(nas_b)
    transfer = manager(telemetry, [a, b], spool, time, max_attempts=4)

    result = await transfer.ship(artifact)

    # min(100·2^(n-1), 250) ms + 0.5·10 ms of jitter, after attempts 1..3; none after the 4th.
    assert time.sleeps == pytest.approx([0.105, 0.205, 0.255])
    assert result.status == "spooled" and result.attempts == 4
    assert [str(nas_a) in e for e in result.errors if e.startswith("attempt")] == [
        True,
        False,
        True,
        False,
    ]  # it switched to the other share after each failure
    assert len(await spool.entries()) == 1
    # Each attempt is a span (ERROR: each failed), and so is each switch between them.
    assert telemetry.force_flush()
    spans = read_spans(telemetry.span_file)
    attempts = [s for s in spans if s["name"] == "selfheal.backup.transfer"]
    assert [s["attributes"]["selfheal.attempt"] for s in attempts] == [1, 2, 3, 4]
    assert {s["status"]["status_code"] for s in attempts} == {"ERROR"}
    assert all(s["attributes"]["selfheal.artifact"] == artifact.name for s in attempts)
    switches = [s for s in spans if s["name"] == "selfheal.backup.switch"]
    assert len(switches) == 3
    assert all(s["start_time"] <= s["end_time"] for s in switches)


async def test_a_transient_failure_then_the_other_transport_delivers(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    nas_a, nas_b = marked_tmpfs(mounts, "nas-a"), marked_tmpfs(mounts, "nas-b")
    artifact = make_artifact(tmp_path / "out")
    original = artifact.path.read_bytes()
    obstruct(nas_a, artifact)
    time = FakeTime()
    transfer = manager(
        telemetry, [MountTransport(nas_a), MountTransport(nas_b)], Spool(tmp_path / "s"), time
    )

    result = await transfer.ship(artifact)

    assert result.status == "delivered" and result.attempts == 2
    assert time.sleeps == pytest.approx([0.105])
    assert result.delivery is not None and result.delivery.remote_path.startswith(str(nas_b))
    assert_on_nas(nas_b, artifact, original)


async def test_the_recovery_window_ends_the_retries(
    mounts: Mounts, tmp_path: Path, telemetry: Telemetry
) -> None:
    nas = marked_tmpfs(mounts, "nas-a")
    artifact = make_artifact(tmp_path / "out")
    obstruct(nas, artifact)
    time = FakeTime()
    transfer = manager(
        telemetry,
        [MountTransport(nas)],
        Spool(tmp_path / "spool"),
        time,
        max_attempts=50,
        retry_base_ms=200,
        retry_max_ms=10_000,
        recovery_window_s=0.5,
    )

    result = await transfer.ship(artifact)

    # 0.21 s fits the 0.5 s window; 0.21 + 0.41 does not.
    assert time.sleeps == pytest.approx([0.21]) and result.attempts == 2
    assert result.status == "spooled" and "recovery window" in result.errors[-1]


async def test_a_full_disk_raises_at_once_and_spools_nothing(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    tiny, spare = marked_tmpfs(mounts, "tiny", size="1m"), marked_tmpfs(mounts, "spare")
    artifact = make_artifact(tmp_path / "out", size=4 * MIB)
    time = FakeTime()
    spool = Spool(tmp_path / "spool")
    transfer = manager(telemetry, [MountTransport(tiny), MountTransport(spare)], spool, time)

    with pytest.raises(TransportError) as caught:
        await transfer.ship(artifact)

    assert caught.value.errno_name == "ENOSPC" and time.sleeps == []
    assert artifact.path.exists() and await spool.entries() == []
    assert not (spare / "redis").exists()  # no retry elsewhere: the router escalates
    assert {p.name for p in tiny.rglob("*")} == {MARKER_NAME, "redis"}


async def test_a_checksum_mismatch_raises_at_once(
    mounts: Mounts, tmp_path: Path, telemetry: Telemetry
) -> None:
    nas = marked_tmpfs(mounts, "nas-a")
    good = make_artifact(tmp_path / "out")
    bad = Artifact(good.target, good.name, good.path, {**good.manifest, "sha256": "f" * 64})
    spool = Spool(tmp_path / "spool")

    with pytest.raises(TransportError) as caught:
        await manager(telemetry, [MountTransport(nas)], spool, FakeTime()).ship(bad)

    assert caught.value.kind == "integrity"
    assert not (nas / "redis" / good.name).exists() and await spool.entries() == []


async def test_the_spool_survives_a_restart_and_checks_its_files(tmp_path: Path) -> None:
    artifact = make_artifact(tmp_path / "out")
    entry = await Spool(tmp_path / "spool").add(artifact, incident_id="inc-1")
    later = make_artifact(tmp_path / "out", second=1)
    await Spool(tmp_path / "spool").add(later)

    reopened = Spool(tmp_path / "spool")
    listed = await reopened.entries()
    assert [e.name for e in listed] == [artifact.name, later.name]  # oldest first
    assert listed[0] == entry and listed[0].incident_id == "inc-1"
    restored = await reopened.artifact(listed[0])
    assert restored.manifest == artifact.manifest and restored.sha256 == artifact.sha256

    with listed[1].file.open("r+b") as fh:  # one flipped byte on the local disk
        first = fh.read(1)
        fh.seek(0)
        fh.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(SpoolEntryCorrupt) as caught:
        await reopened.artifact(listed[1])
    assert caught.value.moved_to == tmp_path / "spool" / CORRUPT_DIR / listed[1].id
    assert [e.name for e in await reopened.entries()] == [artifact.name]


async def test_broken_entries_are_reported_not_listed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    await spool.add(make_artifact(tmp_path / "out"))
    half = tmp_path / "spool" / "20250101T000000000000Z-half"
    half.mkdir()
    (half / "redis-20250101T000000Z.rdb").write_bytes(b"x")  # a crash before entry.json
    garbled = tmp_path / "spool" / "20250101T000001000000Z-garbled"
    garbled.mkdir()
    (garbled / "entry.json").write_text("{not json")

    scan = await spool.scan()

    assert len(scan.entries) == 1
    assert sorted(p.split(":")[0] for p in scan.problems) == [half.name, garbled.name]


async def test_spooling_across_filesystems_copies_then_removes(
    mounts: Mounts, tmp_path: Path
) -> None:
    staging = mounts.tmpfs("staging")
    artifact = make_artifact(staging)
    original = artifact.path.read_bytes()

    entry = await Spool(tmp_path / "spool").add(artifact)

    assert entry.file.read_bytes() == original and not artifact.path.exists()


async def test_drain_skips_a_corrupt_entry_and_delivers_the_rest(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    nas = marked_tmpfs(mounts, "nas-a")
    spool = Spool(tmp_path / "spool")
    bad = await spool.add(make_artifact(tmp_path / "out"))
    good_artifact = make_artifact(tmp_path / "out", second=5)
    good_bytes = good_artifact.path.read_bytes()
    await spool.add(good_artifact)
    bad.file.write_bytes(b"truncated")
    names: list[str] = []

    async def on_delivered(entry: SpoolEntry, delivery: Delivery) -> None:
        names.append(entry.name)

    count = await manager(telemetry, [MountTransport(nas)], spool, FakeTime()).drain(on_delivered)

    assert count == 1 and names == [good_artifact.name]
    assert (nas / "redis" / good_artifact.name).read_bytes() == good_bytes
    assert not (nas / "redis" / bad.name).exists()
    assert await spool.entries() == []
    assert (tmp_path / "spool" / CORRUPT_DIR / bad.id).is_dir()


async def test_drain_raises_a_hard_error_and_keeps_the_entry(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    tiny = marked_tmpfs(mounts, "tiny", size="1m")
    spool = Spool(tmp_path / "spool")
    entry = await spool.add(make_artifact(tmp_path / "out", size=4 * MIB))

    async def on_delivered(entry: SpoolEntry, delivery: Delivery) -> None:
        raise AssertionError("nothing was delivered")

    with pytest.raises(TransportError) as caught:
        await manager(telemetry, [MountTransport(tiny)], spool, FakeTime()).drain(on_delivered)

    assert caught.value.errno_name == "ENOSPC"
    assert await spool.entries() == [entry]


async def test_a_failing_callback_keeps_the_entry_for_the_next_drain(
    mounts: Mounts,
    tmp_path: Path,
    telemetry: Telemetry,
) -> None:
    nas = marked_tmpfs(mounts, "nas-a")
    spool = Spool(tmp_path / "spool")
    entry = await spool.add(make_artifact(tmp_path / "out"))
    transfer = manager(telemetry, [MountTransport(nas)], spool, FakeTime())
    calls: list[str] = []

    async def flaky(entry: SpoolEntry, delivery: Delivery) -> None:
        calls.append(entry.id)
        if len(calls) == 1:
            raise ConnectionError("the bus is away")

    with pytest.raises(ConnectionError):
        await transfer.drain(flaky)
    assert await spool.entries() == [entry]  # its completion is not lost

    assert await transfer.drain(flaky) == 1
    assert calls == [entry.id, entry.id] and await spool.entries() == []


def test_ship_result_is_frozen() -> None:
    result = ShipResult("spooled", None, 0, [], None)
    with pytest.raises(AttributeError):
        result.status = "delivered"  # type: ignore[misc]


async def test_a_failure_says_why_each_transport_failed(
    sshd: SshServer, tmp_path: Path, telemetry: Telemetry
) -> None:
    # The mount folder has no marker; the NAS answers SSH with a host key we do not know.
    unmarked = tmp_path / "Volumes" / "nas"
    unmarked.mkdir(parents=True)
    refusing = transport_for(sshd, known_hosts=sshd.mismatched_known_hosts)
    spool = Spool(tmp_path / "spool")
    artifact = make_artifact(tmp_path / "out")
    mount = MountTransport(unmarked, require_mount_point=False)
    transfer = manager(telemetry, [mount, refusing], spool, FakeTime())

    with anyio.fail_after(60), pytest.raises(TransportError) as caught:
        await transfer.ship(artifact)

    mount_part, ssh_part = caught.value.explained().split("; ", 1)
    assert mount_part.startswith("mount: ") and "marker" in mount_part
    assert str(unmarked) in mount_part
    assert ssh_part.startswith("ssh: ") and "host key" in ssh_part.lower()
    assert artifact.path.exists() and await spool.entries() == []

    # The same NAS with SSH unreachable: the copy is spooled, and both reasons are kept.
    closed = SshTransport(
        sshd.host,
        parse_ssh_flags(f"-o BatchMode=yes -o ConnectTimeout=5 -p {free_port()}"),
        str(sshd.remote_root),
        known_hosts=sshd.known_hosts,
        client_keys=[sshd.user_key],
    )
    transfer = manager(telemetry, [mount, closed], spool, FakeTime())
    with anyio.fail_after(60):
        result = await transfer.ship(artifact)
    assert result.status == "spooled"
    mount_part, ssh_part = result.why().split("; ")[:2]
    assert mount_part.startswith("mount: ") and "marker" in mount_part
    assert ssh_part.startswith("ssh: ") and "refused" in ssh_part.lower()


async def test_an_add_cut_off_by_a_crash_is_put_back_and_spooled_whole(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    artifact = make_artifact(staging)
    artifact.manifest_path.write_text(json.dumps(artifact.manifest))
    original = artifact.path.read_bytes()
    spool = Spool(tmp_path / "spool")
    # What a daemon killed inside add() leaves: the file moved into an entry not yet whole.
    building = spool.directory / ".incoming-20260101T000000000000Z-0badc0de"
    building.mkdir(parents=True)
    os.rename(artifact.path, building / artifact.name)
    assert await spool.entries() == []  # never seen as an entry
    assert await spool.recover_incoming(staging) == [artifact.name]
    assert not building.exists()
    assert artifact.path.read_bytes() == original and artifact.manifest_path.exists()
    entry = await spool.add(artifact)
    assert [e.id for e in await spool.entries()] == [entry.id]
    assert (await spool.artifact(entry)).sha256 == artifact.sha256
    assert not artifact.path.exists() and not artifact.manifest_path.exists()
    assert not [p for p in spool.directory.iterdir() if p.name.startswith(".")]


async def test_a_removal_cut_off_by_a_crash_is_never_listed_and_is_finished_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    staging = tmp_path / "staging"
    spool = Spool(tmp_path / "spool")
    kept = await spool.add(make_artifact(staging))
    delivered = await spool.add(make_artifact(staging, second=1))
    # What a daemon killed inside remove() leaves: the entry un-listed, half deleted.
    removing = spool.directory / f"{REMOVING_PREFIX}{delivered.id}"
    os.rename(delivered.directory, removing)
    (removing / delivered.name).unlink()
    with caplog.at_level(logging.WARNING, logger="selfheal.backup.spool"):
        assert [e.id for e in await spool.entries()] == [kept.id]
    assert caplog.records == [], "an interrupted removal is not a broken entry"
    assert await spool.recover_incoming(staging) == []
    assert not removing.exists()
    assert [e.id for e in await spool.entries()] == [kept.id]
    await spool.remove(kept)
    await spool.remove(kept)  # twice (two drainers): the second finds nothing to do
    assert list(spool.directory.iterdir()) == []


async def test_a_nas_that_comes_back_within_the_wait_takes_the_copy_without_a_spool(
    mounts: Mounts, tmp_path: Path, telemetry: Telemetry
) -> None:
    # After a wake the share mounts a few seconds late: the copy waits for it.
    artifact = make_artifact(tmp_path / "out")
    primary = down_mount(tmp_path)
    time = FakeTime()
    spool = Spool(tmp_path / "spool")

    async def mount_on_second_probe(seconds: float) -> None:
        await time.sleep(seconds)
        if len(time.sleeps) == 2:
            mounts.mount_at(primary.root)
            mark_nas(primary.root, "three-body")

    transfer = manager(
        telemetry, [primary], spool, time, sleep=mount_on_second_probe, nas_wait_s=60.0
    )
    result = await transfer.ship(artifact)
    assert result.status == "delivered" and await spool.entries() == []
    assert time.sleeps == [5.0, 5.0]  # probed every 5 s until it answered


async def test_a_nas_that_stays_away_is_waited_for_only_so_long(
    tmp_path: Path, telemetry: Telemetry
) -> None:
    artifact = make_artifact(tmp_path / "out")
    time = FakeTime()
    spool = Spool(tmp_path / "spool")
    transfer = manager(telemetry, [down_mount(tmp_path)], spool, time, nas_wait_s=12.0)
    result = await transfer.ship(artifact)
    assert result.status == "spooled" and len(await spool.entries()) == 1
    assert time.sleeps == [5.0, 5.0, 2.0] and time.now == 12.0
