"""The mount transport on real tmpfs mounts and real folders: it writes only onto the NAS."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

import anyio
import pytest

from selfheal.backup.model import TransportError
from selfheal.backup.transports.mount import MARKER_NAME, MountTransport, mark_nas, read_marker
from tests.support.mounts import Mounts, is_mounted, unmount

pytestmark = pytest.mark.anyio

MIB = 1 << 20
REMOTE = PurePosixPath("redis/redis-20250101T033000Z.rdb")


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; returns their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def all_files(root: Path) -> set[str]:
    """Every file below `root`, as relative paths."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def nas(mounts: Mounts) -> Path:
    root = mounts.tmpfs("nas")
    mark_nas(root, "nas-test")
    return root


async def test_put_onto_a_marked_tmpfs_mount(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 3 * MIB + 17)
    seen: list[tuple[int, int]] = []
    transport = MountTransport(nas, nas_id="nas-test", chunk_bytes=MIB)

    assert (await transport.probe()).ok
    delivery = await transport.put(
        src, REMOTE, sha256=sha, size=3 * MIB + 17, progress=lambda d, t: seen.append((d, t))
    )

    final = nas / REMOTE
    assert delivery.verified and delivery.mode == "mount" and delivery.bytes == 3 * MIB + 17
    assert delivery.remote_path == str(final)
    assert final.read_bytes() == src.read_bytes()
    assert all_files(nas) == {MARKER_NAME, str(REMOTE)}  # no .partial left behind
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (3 * MIB + 17, 3 * MIB + 17) and len(seen) >= 4


async def test_put_onto_a_marked_plain_folder_when_the_mount_check_is_off(tmp_path: Path) -> None:
    root = tmp_path / "var" / "nas"
    root.mkdir(parents=True)
    mark_nas(root, "quickstart")
    src = tmp_path / "a.rdb"
    sha = random_file(src, 100_000)
    transport = MountTransport(root, require_mount_point=False)

    assert (await transport.probe()).ok
    await transport.put(src, REMOTE, sha256=sha, size=100_000)

    assert (root / REMOTE).read_bytes() == src.read_bytes()
    assert read_marker(root) == "quickstart"


async def test_a_marked_plain_folder_where_the_mount_should_be_is_refused(tmp_path: Path) -> None:
    # Defect 3: the share is not mounted, a local folder (even a marked one) stands in its place.
    root = tmp_path / "Volumes" / "three-body"
    root.mkdir(parents=True)
    mark_nas(root, "nas-test")
    src = tmp_path / "a.rdb"
    sha = random_file(src, 4096)
    transport = MountTransport(root, nas_id="nas-test")

    probe = await transport.probe()
    assert not probe.ok and "not a mount point" in probe.reason
    with pytest.raises(TransportError) as caught:
        await transport.put(src, REMOTE, sha256=sha, size=4096)

    assert caught.value.kind == "transport.mount.missing" and caught.value.errno_name == "ENODEV"
    assert all_files(root) == {MARKER_NAME}
    assert not (root / "redis").exists()


async def test_an_unmarked_mount_is_refused(mounts: Mounts, tmp_path: Path) -> None:
    root = mounts.tmpfs("other")
    src = tmp_path / "a.rdb"
    sha = random_file(src, 4096)
    transport = MountTransport(root)

    probe = await transport.probe()
    assert not probe.ok and MARKER_NAME in probe.reason
    with pytest.raises(TransportError) as caught:
        await transport.put(src, REMOTE, sha256=sha, size=4096)
    assert caught.value.errno_name == "ENODEV"
    assert all_files(root) == set()


async def test_a_mount_marked_for_another_nas_is_refused(nas: Path, tmp_path: Path) -> None:
    transport = MountTransport(nas, nas_id="some-other-nas")
    probe = await transport.probe()
    assert not probe.ok and "'nas-test'" in probe.reason
    with pytest.raises(TransportError):
        await transport.list_dir(PurePosixPath("redis"))


async def test_a_missing_root_probes_false_without_raising(tmp_path: Path) -> None:
    probe = await MountTransport(tmp_path / "nowhere").probe()
    assert not probe.ok and "does not exist" in probe.reason


async def test_disk_full_raises_enospc_and_leaves_nothing(mounts: Mounts, tmp_path: Path) -> None:
    root = mounts.tmpfs("tiny", size="1m")
    mark_nas(root, "tiny")
    src = tmp_path / "big.rdb"
    sha = random_file(src, 4 * MIB)

    with pytest.raises(TransportError) as caught:
        await MountTransport(root).put(src, REMOTE, sha256=sha, size=4 * MIB)

    assert caught.value.errno_name == "ENOSPC"
    assert caught.value.evidence["errno"] == "ENOSPC"
    assert all_files(root) == {MARKER_NAME}


async def test_a_copy_cancelled_midway_leaves_no_file(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 8 * MIB)
    transport = MountTransport(nas, chunk_bytes=MIB)
    seen: list[int] = []

    with anyio.fail_after(20), anyio.CancelScope() as scope:

        def progress(done: int, total: int) -> None:
            seen.append(done)
            if done >= 2 * MIB:
                scope.cancel()

        await transport.put(src, REMOTE, sha256=sha, size=8 * MIB, progress=progress)

    assert scope.cancelled_caught
    assert 2 * MIB <= max(seen) < 8 * MIB  # it really stopped midway
    assert all_files(nas) == {MARKER_NAME}


async def test_a_wrong_checksum_removes_the_final_file(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    random_file(src, MIB)

    with pytest.raises(TransportError) as caught:
        await MountTransport(nas).put(src, REMOTE, sha256="0" * 64, size=MIB)

    assert caught.value.kind == "integrity" and caught.value.exception == "ChecksumMismatch"
    assert all_files(nas) == {MARKER_NAME}


async def test_a_wrong_size_is_an_integrity_error(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 5000)
    with pytest.raises(TransportError) as caught:
        await MountTransport(nas).put(src, REMOTE, sha256=sha, size=5001)
    assert caught.value.kind == "integrity"
    assert not (nas / REMOTE).exists()


async def test_the_share_vanishing_during_the_copy_is_not_committed(
    nas: Path, tmp_path: Path
) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 4 * MIB)
    transport = MountTransport(nas, chunk_bytes=MIB)

    def progress(done: int, total: int) -> None:
        if done == MIB:
            unmount(nas)  # lazily: our open file keeps the detached share alive

    with pytest.raises(TransportError) as caught:
        await transport.put(src, REMOTE, sha256=sha, size=4 * MIB, progress=progress)

    assert caught.value.errno_name == "ENODEV"
    assert not is_mounted(nas)
    assert all_files(nas) == set()  # nothing landed on the local disk underneath


async def test_putting_the_same_verified_file_again_keeps_it(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, MIB)
    transport = MountTransport(nas)
    await transport.put(src, REMOTE, sha256=sha, size=MIB)
    inode = (nas / REMOTE).stat().st_ino

    again = await transport.put(src, REMOTE, sha256=sha, size=MIB)

    assert again.verified and (nas / REMOTE).stat().st_ino == inode


async def test_put_never_replaces_an_existing_copy(nas: Path, tmp_path: Path) -> None:
    # Issue 11.6: a second delivery under a name already taken replaced the first backup.
    first, second = tmp_path / "first.rdb", tmp_path / "second.rdb"
    first_sha, second_sha = random_file(first, 3 * MIB), random_file(second, MIB)
    transport = MountTransport(nas)
    await transport.put(first, REMOTE, sha256=first_sha, size=3 * MIB)

    with pytest.raises(TransportError) as caught:
        await transport.put(second, REMOTE, sha256=second_sha, size=MIB, manifest=b"{}\n")

    assert caught.value.kind == "integrity" and caught.value.errno_name == "EEXIST"
    assert f"refusing to replace {nas / REMOTE}" in str(caught.value)
    assert (nas / REMOTE).read_bytes() == first.read_bytes()
    assert all_files(nas) == {MARKER_NAME, str(REMOTE)}


async def test_a_name_taken_during_the_copy_is_not_replaced(nas: Path, tmp_path: Path) -> None:
    # The last step links the copy to its name (EEXIST if taken); os.replace replaced it.
    src = tmp_path / "a.rdb"
    sha = random_file(src, 4 * MIB)
    final = nas / REMOTE

    def squat(done: int, total: int) -> None:
        if not final.exists():  # someone else's file takes the name mid-copy
            final.write_bytes(b"another backup")

    with pytest.raises(TransportError) as caught:
        await MountTransport(nas, chunk_bytes=MIB).put(
            src, REMOTE, sha256=sha, size=4 * MIB, progress=squat, manifest=b'{"size": 1}\n'
        )

    assert caught.value.errno_name == "EEXIST"
    assert final.read_bytes() == b"another backup"
    # Neither our .partial nor the manifest written for it stays.
    assert all_files(nas) == {MARKER_NAME, str(REMOTE)}


async def test_the_manifest_lands_before_the_final_name(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 4 * MIB)
    final = nas / REMOTE
    manifest = final.with_name(final.name + ".manifest.json")
    body = b'{"sha256": "%s", "size": %d}\n' % (sha.encode(), 4 * MIB)
    seen_during_copy: list[bool] = []

    def watch(done: int, total: int) -> None:
        seen_during_copy.append(manifest.exists() or final.exists())

    transport = MountTransport(nas, chunk_bytes=MIB)
    await transport.put(src, REMOTE, sha256=sha, size=4 * MIB, progress=watch, manifest=body)
    # Delivered again (a drain after a crash): the same manifest, even reformatted, is kept.
    again = await transport.put(src, REMOTE, sha256=sha, size=4 * MIB, manifest=body.rstrip())

    assert seen_during_copy and not any(seen_during_copy)
    assert manifest.read_bytes() == body and again.verified
    assert all_files(nas) == {MARKER_NAME, str(REMOTE), f"{REMOTE}.manifest.json"}
    with pytest.raises(TransportError) as caught:
        await transport.put(src, REMOTE, sha256=sha, size=4 * MIB, manifest=b'{"other": 1}')
    assert caught.value.errno_name == "EEXIST" and str(manifest) in str(caught.value)
    assert manifest.read_bytes() == body


async def test_a_redelivery_removes_the_second_name_a_crash_left(nas: Path, tmp_path: Path) -> None:
    # The no-replace rename links the .partial to the final name, then unlinks it: a
    # crash between the two leaves the file under both names (data or manifest).
    src = tmp_path / "a.rdb"
    sha = random_file(src, MIB)
    final = nas / REMOTE
    manifest = final.with_name(final.name + ".manifest.json")
    body = b'{"sha256": "%s", "size": %d}\n' % (sha.encode(), MIB)
    transport = MountTransport(nas)
    await transport.put(src, REMOTE, sha256=sha, size=MIB, manifest=body)
    for name in (final, manifest):
        os.link(name, name.with_name(name.name + ".partial"))
    stranger = nas / "redis" / "redis-20250101T040000Z.rdb.partial"
    stranger.write_bytes(b"someone else's copy in progress")

    again = await transport.put(src, REMOTE, sha256=sha, size=MIB, manifest=body)

    assert again.verified
    assert all_files(nas) == {
        MARKER_NAME,
        str(REMOTE),
        f"{REMOTE}.manifest.json",
        str(stranger.relative_to(nas)),
    }


async def test_list_hash_read_and_remove(nas: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 70_000)
    transport = MountTransport(nas)
    await transport.put(src, REMOTE, sha256=sha, size=70_000)
    (nas / "redis" / "sub").mkdir()

    listed = await transport.list_dir(PurePosixPath("redis"))
    assert [(e.name, e.size) for e in listed] == [(REMOTE.name, 70_000)]
    assert await transport.list_dir(PurePosixPath("typesense")) == []
    assert await transport.sha256(REMOTE) == sha
    assert await transport.read_small(REMOTE, limit=70_000) == src.read_bytes()
    with pytest.raises(TransportError) as caught:
        await transport.read_small(REMOTE, limit=1000)
    assert caught.value.errno_name == "EFBIG"

    await transport.remove(REMOTE)
    await transport.remove(REMOTE)  # already gone is fine
    assert await transport.list_dir(PurePosixPath("redis")) == []


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside", "redis/../../outside", ""])
async def test_paths_outside_the_root_are_rejected(nas: Path, tmp_path: Path, bad: str) -> None:
    src = tmp_path / "a.rdb"
    sha = random_file(src, 10)
    transport = MountTransport(nas)
    with pytest.raises(ValueError):
        await transport.put(src, PurePosixPath(bad), sha256=sha, size=10)
    with pytest.raises(ValueError):
        await transport.remove(PurePosixPath(bad))
    with pytest.raises(ValueError):
        await transport.sha256(PurePosixPath(bad))
    if bad:  # "" is the root itself, which list_dir may read
        with pytest.raises(ValueError):
            await transport.list_dir(PurePosixPath(bad))
    assert all_files(nas) == {MARKER_NAME}


async def test_a_symlinked_folder_cannot_lead_outside(nas: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (nas / "redis").symlink_to(outside)
    src = tmp_path / "a.rdb"
    sha = random_file(src, 10)
    with pytest.raises(TransportError) as caught:
        await MountTransport(nas).put(src, REMOTE, sha256=sha, size=10)
    assert caught.value.kind == "config"
    assert list(outside.iterdir()) == []


def test_marker_round_trip_and_garbage(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    marker = mark_nas(tmp_path, "three-body")
    assert marker == tmp_path / MARKER_NAME and read_marker(tmp_path) == "three-body"
    marker.write_text("not json")
    assert read_marker(tmp_path) is None
    with pytest.raises(ValueError):
        mark_nas(tmp_path, " ")


async def test_fetch_copies_verified_and_leaves_nothing_on_a_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "nas"
    root.mkdir()
    mark_nas(root, "quickstart")
    src = tmp_path / "a.rdb"
    sha = random_file(src, 300_000)
    transport = MountTransport(root, require_mount_point=False, chunk_bytes=64 << 10)
    await transport.put(src, REMOTE, sha256=sha, size=300_000)

    copy = tmp_path / "fetched.rdb"
    await transport.fetch(REMOTE, copy, sha256=sha, size=300_000)
    assert copy.read_bytes() == src.read_bytes() and (copy.stat().st_mode & 0o777) == 0o600
    with pytest.raises(FileExistsError):  # never over an existing file
        await transport.fetch(REMOTE, copy, sha256=sha, size=300_000)

    (root / REMOTE).chmod(0o644)
    fd = os.open(root / REMOTE, os.O_WRONLY)
    os.pwrite(fd, b"\0" * 10, 0)
    os.close(fd)
    other = tmp_path / "damaged.rdb"
    with pytest.raises(TransportError) as caught:
        await transport.fetch(REMOTE, other, sha256=sha, size=300_000)
    assert caught.value.kind == "integrity" and "checksum mismatch" in str(caught.value)
    assert not other.exists()
