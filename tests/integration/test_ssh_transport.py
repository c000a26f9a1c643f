"""SshTransport against a real OpenSSH sshd: verified uploads, refusals, cleanup, fallbacks."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath

import anyio
import psutil
import pytest

from selfheal.backup.model import TransportError
from selfheal.backup.transports.sftp_writer import Batch, feed_blocks
from selfheal.backup.transports.ssh import SshTransport
from selfheal.core.classify import FailureClass, classify
from selfheal.core.contracts import Evidence
from selfheal.core.ssh_flags import parse_ssh_flags
from tests.support.mounts import Mounts
from tests.support.servers import free_port
from tests.support.sshd import SshServer, lean_send_from_env, running_sshd, transport_for

pytestmark = pytest.mark.anyio

WAIT_S = 60.0
ORIGINAL_FLAGS = (
    "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2"
)
RDB = PurePosixPath("redis/redis-20261127T033000Z.rdb")


@pytest.fixture
def sftp_only_sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd whose account runs internal-sftp only (no exec), as on many NAS boxes."""
    yield from running_sshd(tmp_path / "sshd", force_internal_sftp=True)


def make_transport(server: SshServer, **overrides: object) -> SshTransport:
    """A transport for `server` with the original's flags."""
    return transport_for(server, ORIGINAL_FLAGS, **overrides)


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes; return their sha256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    """Every file below `root`, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def classified(exc: TransportError) -> FailureClass:
    """How the router would classify this failure."""
    return classify([Evidence.model_validate(exc.evidence)]).failure_class


async def test_put_uploads_verifies_and_reports(sshd: SshServer, tmp_path: Path) -> None:
    size = 8 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    seen: list[tuple[int, int]] = []
    transport = make_transport(sshd)
    with anyio.fail_after(WAIT_S):
        delivery = await transport.put(
            local, RDB, sha256=digest, size=size, progress=lambda d, t: seen.append((d, t))
        )
    final = sshd.remote_root / str(RDB)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest
    assert files_under(sshd.remote_root) == [str(RDB)]  # no .partial left behind
    assert delivery.mode == "ssh" and transport.mode == "ssh"
    assert delivery.remote_path == str(final)
    assert delivery.bytes == size and delivery.verified and delivery.seconds > 0
    assert transport.hash_method == "exec"  # sha256sum ran on the server
    done = [d for d, _ in seen]
    assert done == sorted(done) and len(set(done)) == len(done) and len(done) > 1
    assert done[-1] == size and {t for _, t in seen} == {size}
    assert set(transport.last_phases) == {
        "connect",
        "resume_check",
        "upload",
        "sync_verify",
        "rename",
    }


async def test_put_never_replaces_an_existing_copy(sshd: SshServer, tmp_path: Path) -> None:
    # Issue 11.6: a second delivery under a name already taken replaced the first backup.
    transport = make_transport(sshd)
    first, second = tmp_path / "first.rdb", tmp_path / "second.rdb"
    first_sha, second_sha = random_file(first, 3 << 20), random_file(second, 1 << 20)
    final = sshd.remote_root / str(RDB)
    with anyio.fail_after(WAIT_S):
        await transport.put(first, RDB, sha256=first_sha, size=3 << 20)
        with pytest.raises(TransportError) as caught:
            await transport.put(second, RDB, sha256=second_sha, size=1 << 20, manifest=b"{}\n")
        # The very same file again (a drain after a crash) counts as delivered.
        again = await transport.put(first, RDB, sha256=first_sha, size=3 << 20)
    assert caught.value.kind == "integrity" and caught.value.errno_name == "EEXIST"
    assert "refusing to replace" in str(caught.value) and str(final) in str(caught.value)
    assert classified(caught.value) is FailureClass.INTEGRITY
    assert hashlib.sha256(final.read_bytes()).hexdigest() == first_sha and again.verified
    assert files_under(sshd.remote_root) == [str(RDB)]


async def test_a_name_taken_during_the_upload_is_not_replaced(
    sshd: SshServer, tmp_path: Path
) -> None:
    # The last step is SFTPv3 RENAME, which fails on an existing name; posix-rename (used
    # before) silently replaced it.
    size = 8 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    final = sshd.remote_root / str(RDB)

    def squat(done: int, total: int) -> None:
        if not final.exists():  # someone else's file takes the name mid-upload
            final.write_bytes(b"another backup")

    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await make_transport(sshd).put(
            local, RDB, sha256=digest, size=size, progress=squat, manifest=b'{"size": 1}\n'
        )
    assert caught.value.errno_name == "EEXIST" and str(final) in str(caught.value)
    assert final.read_bytes() == b"another backup"
    # Neither our .partial nor the manifest written for it stays.
    assert files_under(sshd.remote_root) == [str(RDB)]


async def test_the_manifest_lands_before_the_final_name(sshd: SshServer, tmp_path: Path) -> None:
    size = 4 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    final = sshd.remote_root / str(RDB)
    manifest = final.with_name(final.name + ".manifest.json")
    body = b'{"sha256": "%s", "size": %d}\n' % (digest.encode(), size)
    seen_before_rename: list[bool] = []

    def watch(done: int, total: int) -> None:
        seen_before_rename.append(manifest.exists() or final.exists())

    with anyio.fail_after(WAIT_S):
        await make_transport(sshd).put(
            local, RDB, sha256=digest, size=size, progress=watch, manifest=body
        )
        again = await make_transport(sshd).put(
            local, RDB, sha256=digest, size=size, manifest=body.rstrip()
        )
    assert not any(seen_before_rename)
    assert manifest.read_bytes() == body and again.verified  # the same manifest is kept
    assert files_under(sshd.remote_root) == [str(RDB), f"{RDB}.manifest.json"]


async def test_original_flag_string_works_end_to_end(sshd: SshServer, tmp_path: Path) -> None:
    """Defect 8: the flags were one argv item, so the SSH fallback never worked."""
    options = parse_ssh_flags(sshd.flags())
    transport = SshTransport(
        sshd.host, options, str(sshd.remote_root), lean_send=lean_send_from_env()
    )
    assert (transport.port, transport.connect_timeout) == (sshd.port, 10.0)
    assert (transport.keepalive_interval, transport.keepalive_count_max) == (5.0, 2)
    assert transport.known_hosts == [sshd.known_hosts]
    assert transport.client_keys == [sshd.user_key]
    local = tmp_path / "snap.tar"
    digest = random_file(local, 1 << 20)
    with anyio.fail_after(WAIT_S):
        probe = await transport.probe()
        delivery = await transport.put(
            local, PurePosixPath("typesense/snap.tar"), sha256=digest, size=1 << 20
        )
    assert probe.ok, probe.reason
    assert delivery.verified
    assert (sshd.remote_root / "typesense" / "snap.tar").read_bytes() == local.read_bytes()


async def test_host_key_mismatch_is_refused_and_writes_nothing(
    sshd: SshServer, tmp_path: Path
) -> None:
    local = tmp_path / "dump.rdb"
    digest = random_file(local, 1 << 20)
    transport = make_transport(sshd, known_hosts=sshd.mismatched_known_hosts)
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.put(local, RDB, sha256=digest, size=1 << 20)
    assert caught.value.kind == "auth.host_key"
    assert caught.value.exception == "HostKeyNotVerifiable"
    assert classified(caught.value) is FailureClass.AUTH
    assert files_under(sshd.remote_root) == []
    assert "Accepted publickey" not in sshd.log()  # we never even authenticated
    with anyio.fail_after(WAIT_S):
        probe = await transport.probe()
    assert not probe.ok and "host key" in probe.reason.lower()


async def test_missing_known_hosts_is_refused_before_connecting(
    sshd: SshServer, tmp_path: Path
) -> None:
    local = tmp_path / "dump.rdb"
    digest = random_file(local, 1024)
    transport = make_transport(sshd, known_hosts=tmp_path / "no-such-known_hosts")
    seen_before = len(sshd.log())  # the fixture's readiness check connected once already
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.put(local, RDB, sha256=digest, size=1024)
    assert caught.value.kind == "auth.host_key"
    assert classified(caught.value) is FailureClass.AUTH
    assert files_under(sshd.remote_root) == []
    assert "Connection from" not in sshd.log()[seen_before:]


async def test_wrong_user_key_is_an_auth_failure(sshd: SshServer, tmp_path: Path) -> None:
    transport = make_transport(sshd, client_keys=[sshd.other_user_key])
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.list_dir(PurePosixPath("redis"))
    assert caught.value.kind == "auth"
    assert caught.value.exception == "PermissionDenied"
    assert classified(caught.value) is FailureClass.AUTH


async def test_nothing_listening_is_transient(sshd: SshServer) -> None:
    transport = make_transport(sshd)
    transport.port = free_port()  # nothing listens there
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.list_dir(PurePosixPath("redis"))
    assert caught.value.evidence["errno"] == "ECONNREFUSED"
    assert classified(caught.value) is FailureClass.TRANSIENT_TRANSPORT
    with anyio.fail_after(WAIT_S):
        probe = await transport.probe()
    assert not probe.ok
    assert "ECONNREFUSED" in probe.reason


async def test_silent_server_times_out_as_transient(sshd: SshServer) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        transport = make_transport(sshd, connect_timeout=1.0)
        transport.port = silent.getsockname()[1]
        with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
            await transport.read_small(PurePosixPath("redis/x.manifest.json"))
        with anyio.fail_after(WAIT_S):
            probe = await transport.probe()
    assert caught.value.evidence["errno"] == "ETIMEDOUT"
    assert classified(caught.value) is FailureClass.TRANSIENT_TRANSPORT
    assert not probe.ok and "ETIMEDOUT" in probe.reason


async def test_probe_reports_a_missing_root(sshd: SshServer) -> None:
    with anyio.fail_after(WAIT_S):
        good = await make_transport(sshd).probe()
        sshd.remote_root.rename(sshd.remote_root.with_name("elsewhere"))
        bad = await make_transport(sshd).probe()
        sshd.remote_root.write_text("a file, not the NAS folder")
        not_a_folder = await make_transport(sshd).probe()
    assert good.ok, good.reason
    assert not bad.ok and str(sshd.remote_root) in bad.reason
    assert not not_a_folder.ok and "no folder" in not_a_folder.reason


async def test_checksum_mismatch_leaves_nothing(sshd: SshServer, tmp_path: Path) -> None:
    local = tmp_path / "dump.rdb"
    random_file(local, 2 << 20)
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await make_transport(sshd).put(local, RDB, sha256="0" * 64, size=2 << 20)
    assert caught.value.kind == "integrity"
    assert caught.value.exception == "ChecksumMismatch"
    assert classified(caught.value) is FailureClass.INTEGRITY
    assert files_under(sshd.remote_root) == []


async def test_cancelled_put_leaves_no_final_file(sshd: SshServer, tmp_path: Path) -> None:
    size = 48 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    transport = make_transport(sshd)
    progressed: list[int] = []
    with anyio.fail_after(WAIT_S):
        with anyio.CancelScope() as scope:

            def cancel_midway(done: int, total: int) -> None:
                progressed.append(done)
                if done >= 4 << 20:
                    scope.cancel()

            await transport.put(local, RDB, sha256=digest, size=size, progress=cancel_midway)
        assert scope.cancelled_caught and 0 < progressed[-1] < size
        assert not (sshd.remote_root / str(RDB)).exists()
        assert files_under(sshd.remote_root) == []  # the .partial was removed on the way out
        await transport.put(local, RDB, sha256=digest, size=size)
    assert files_under(sshd.remote_root) == [str(RDB)]


async def test_server_killed_midway_then_next_put_recovers(sshd: SshServer, tmp_path: Path) -> None:
    size = 48 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    transport = make_transport(sshd)
    assert sshd.process is not None
    listener = psutil.Process(sshd.process.pid)

    def kill_sessions(done: int, total: int) -> None:
        if done >= 4 << 20:
            for child in listener.children(recursive=True):  # our sshd's own sessions, by pid
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass  # gone with its parent session already

    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.put(local, RDB, sha256=digest, size=size, progress=kill_sessions)
    assert classified(caught.value) is FailureClass.TRANSIENT_TRANSPORT
    assert not (sshd.remote_root / str(RDB)).exists()
    leftovers = files_under(sshd.remote_root)
    assert leftovers in ([], [f"{RDB}.partial"])  # the session died before it could clean up
    with anyio.fail_after(WAIT_S):
        await transport.put(local, RDB, sha256=digest, size=size)
    assert files_under(sshd.remote_root) == [str(RDB)]
    final = sshd.remote_root / str(RDB)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest


async def test_sftp_only_account_verifies_by_reading_back(
    sftp_only_sshd: SshServer, tmp_path: Path
) -> None:
    size = 5 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    transport = make_transport(sftp_only_sshd)
    with anyio.fail_after(WAIT_S):
        delivery = await transport.put(local, RDB, sha256=digest, size=size)
        assert transport.hash_method == "readback"
        assert await transport.sha256(RDB) == digest
    assert delivery.verified
    assert files_under(sftp_only_sshd.remote_root) == [str(RDB)]
    assert "forced-command" in sftp_only_sshd.log()  # the exec attempt really was refused
    other = RDB.with_name("redis-20261127T033001Z.rdb")
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await transport.put(local, other, sha256="f" * 64, size=size)
    assert caught.value.exception == "ChecksumMismatch"  # read-back still catches a mismatch
    assert files_under(sftp_only_sshd.remote_root) == [str(RDB)]


async def test_list_remove_sha256_read_small(sshd: SshServer, tmp_path: Path) -> None:
    transport = make_transport(sshd)
    local = tmp_path / "dump.rdb"
    digest = random_file(local, 300_000)
    manifest = tmp_path / "dump.manifest.json"
    manifest.write_bytes(b'{"sha256": "%s"}\n' % digest.encode())
    manifest_digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    side = PurePosixPath("redis/redis-20261127T033000Z.manifest.json")
    with anyio.fail_after(WAIT_S):
        await transport.put(local, RDB, sha256=digest, size=300_000)
        await transport.put(manifest, side, sha256=manifest_digest, size=manifest.stat().st_size)
        (sshd.remote_root / "redis" / "subdir").mkdir()
        entries = await transport.list_dir(PurePosixPath("redis"))
        assert await transport.list_dir(PurePosixPath("typesense")) == []
        assert await transport.sha256(RDB) == digest
        assert await transport.read_small(side) == manifest.read_bytes()
        with pytest.raises(TransportError) as too_big:
            await transport.read_small(RDB, limit=1000)
        await transport.remove(RDB)
        await transport.remove(RDB)  # already gone: fine
        after = await transport.list_dir(PurePosixPath("redis"))
        with pytest.raises(TransportError) as gone:
            await transport.sha256(RDB)
    assert [(e.name, e.size) for e in entries] == [
        (side.name, manifest.stat().st_size),
        (RDB.name, 300_000),
    ]
    assert all(e.mtime > 0 for e in entries)
    assert too_big.value.errno_name == "EFBIG"
    assert [e.name for e in after] == [side.name]
    assert gone.value.errno_name == "ENOENT"


async def test_paths_outside_the_root_are_refused(sshd: SshServer, tmp_path: Path) -> None:
    transport = make_transport(sshd)
    seen_before = len(sshd.log())
    local = tmp_path / "x"
    local.write_bytes(b"x")
    for bad in ("/etc/passwd", "../escape", "redis/../../escape", ""):
        with pytest.raises(ValueError):
            await transport.put(local, PurePosixPath(bad), sha256="0" * 64, size=1)
    with pytest.raises(ValueError):
        await transport.remove(PurePosixPath("../x"))
    with pytest.raises(ValueError):
        SshTransport(sshd.host, parse_ssh_flags(""), "relative/root")
    assert "Connection from" not in sshd.log()[seen_before:]


async def test_full_remote_disk_is_enospc(sshd: SshServer, tmp_path: Path, mounts: Mounts) -> None:
    small = mounts.mount_at(sshd.remote_root / "small", "8m")
    local = tmp_path / "dump.rdb"
    digest = random_file(local, 12 << 20)
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await make_transport(sshd).put(
            local, PurePosixPath("small/dump.rdb"), sha256=digest, size=12 << 20
        )
    assert caught.value.errno_name == "ENOSPC"
    assert classified(caught.value) is FailureClass.RESOURCE_EXHAUSTED
    assert files_under(small) == []


@pytest.mark.parametrize("size", [0, 1, 4096, 4096 * 3, 4096 * 3 + 17, 4096 * 7 - 1])
async def test_read_ahead_yields_every_byte_once_in_order(tmp_path: Path, size: int) -> None:
    """The upload's read-ahead: whole blocks at their offsets, batches split anywhere, no gap."""
    payload = os.urandom(size)
    source = tmp_path / "payload.bin"
    source.write_bytes(payload)
    received: Batch = []
    sender, batches = anyio.create_memory_object_stream[Batch](1)
    with source.open("rb", buffering=0) as handle:
        async with anyio.create_task_group() as tg, batches:
            tg.start_soon(partial(feed_blocks, handle.fileno(), 4096, sender, batch_blocks=3))
            async for batch in batches:
                assert 0 < len(batch) <= 3
                received.extend(batch)
    assert [offset for offset, _ in received] == list(range(0, size, 4096))
    assert all(len(data) == 4096 for _, data in received[:-1])
    assert b"".join(data for _, data in received) == payload


async def test_fetch_copies_verified_over_sftp_and_leaves_nothing_on_a_mismatch(
    sshd: SshServer, tmp_path: Path
) -> None:
    size = 3 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    transport = make_transport(sshd)
    with anyio.fail_after(WAIT_S):
        await transport.put(local, RDB, sha256=digest, size=size)
        copy = tmp_path / "fetched.rdb"
        await transport.fetch(RDB, copy, sha256=digest, size=size)
        assert copy.read_bytes() == local.read_bytes()
        wrong = tmp_path / "wrong.rdb"
        with pytest.raises(TransportError) as caught:
            await transport.fetch(RDB, wrong, sha256="0" * 64, size=size)
        assert caught.value.kind == "integrity" and not wrong.exists()
        missing = tmp_path / "missing.rdb"
        with pytest.raises(TransportError):
            await transport.fetch(PurePosixPath("redis/none.rdb"), missing, sha256=digest, size=1)
        assert not missing.exists()


async def resumed_upload(server: SshServer, tmp_path: Path) -> tuple[int, list[int], str]:
    """Cut an upload off by killing sshd halfway, start sshd again, upload again.

    Returns the delivery's resume offset, the progress the second upload reported and
    the hash method it used.
    """
    size = 96 << 20
    local = tmp_path / "big.rdb"
    digest = random_file(local, size)
    transport = make_transport(server)
    partial_path = server.remote_root / f"{RDB}.partial"

    def cut_halfway(done: int, total: int) -> None:
        if done >= total // 2 and server.process is not None and server.process.poll() is None:
            server.stop(kill=True)  # blocks the loop for a moment: no byte more is sent

    with anyio.fail_after(WAIT_S), pytest.raises(TransportError):
        await transport.put(local, RDB, sha256=digest, size=size, progress=cut_halfway)
    left = partial_path.stat().st_size  # the connection died: the partial could not go
    assert size // 2 <= left < size
    server.start()
    seen: list[int] = []
    with anyio.fail_after(WAIT_S):
        delivery = await transport.put(
            local, RDB, sha256=digest, size=size, progress=lambda d, t: seen.append(d)
        )
    final = server.remote_root / str(RDB)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest
    assert files_under(server.remote_root) == [str(RDB)]
    assert delivery.verified and delivery.bytes == size
    # Resumed from a block boundary below what was there, after verifying that prefix.
    assert 0 < delivery.resumed_from <= left and delivery.resumed_from >= size // 4
    return delivery.resumed_from, seen, transport.hash_method


async def test_an_upload_cut_off_resumes_from_the_verified_remote_offset(
    sshd: SshServer, tmp_path: Path
) -> None:
    resumed, seen, method = await resumed_upload(sshd, tmp_path)
    assert seen[0] >= resumed and seen[-1] == 96 << 20  # only the rest was sent
    assert method == "exec"  # the prefix was hashed on the NAS (head -c | sha256sum)


async def test_a_resume_is_checked_by_reading_back_when_the_nas_has_no_exec(
    sftp_only_sshd: SshServer, tmp_path: Path
) -> None:
    resumed, seen, method = await resumed_upload(sftp_only_sshd, tmp_path)
    assert seen[0] >= resumed and method == "readback"


async def test_a_leftover_that_does_not_match_is_replaced_whole(
    sshd: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    size = 64 << 20
    local = tmp_path / "dump.rdb"
    digest = random_file(local, size)
    leftover = sshd.remote_root / f"{RDB}.partial"
    leftover.parent.mkdir(parents=True)
    # Three quarters of the right bytes with a hole in them: writes that never landed.
    data = bytearray(local.read_bytes()[: size * 3 // 4])
    data[1 << 20 : 2 << 20] = bytes(1 << 20)
    leftover.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="selfheal"), anyio.fail_after(WAIT_S):
        delivery = await make_transport(sshd).put(local, RDB, sha256=digest, size=size)
    assert delivery.resumed_from == 0
    assert any("do not match" in r.getMessage() for r in caplog.records), "the prefix was checked"
    final = sshd.remote_root / str(RDB)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest
    assert files_under(sshd.remote_root) == [str(RDB)]
