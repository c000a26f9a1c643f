"""SSH/SFTP transport: asyncssh to the NAS, host keys always checked against known_hosts."""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import shlex
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Final, NamedTuple, cast

import anyio
import asyncssh

from selfheal.backup.model import (
    Delivery,
    FetchedCopy,
    ProbeResult,
    ProgressFn,
    RemoteEntry,
    TransportError,
    name_taken,
    same_manifest,
)
from selfheal.backup.transports.sftp_writer import Batch, feed_blocks, prefix_sha256
from selfheal.backup.transports.ssh_lean_send import use_lean_send
from selfheal.core.artifacts import PARTIAL_SUFFIX, manifest_name
from selfheal.core.ssh_flags import SshOptions
from selfheal.taskgroups import first_error

log = logging.getLogger("selfheal.backup.ssh")

MODE: Final = "ssh"
# OpenSSH's sftp-server drops the session on a write above its 256 KiB message limit.
BLOCK_SIZE: Final = 255 * 1024
MAX_REQUESTS: Final = 64
# AES-GCM runs on the CPU's AES instructions: about twice asyncssh's default chacha20.
# "^" puts these first and keeps asyncssh's defaults behind them for older servers.
PREFERRED_CIPHERS: Final = (
    "^aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
)
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# Without ServerAlive* in the flags a dead NAS would hang a transfer: keep a bound anyway.
DEFAULT_KEEPALIVE_INTERVAL: Final = 15.0
DEFAULT_KEEPALIVE_COUNT_MAX: Final = 3
_READBACK_CHUNK: Final = 16 << 20
# Below this, an interrupted upload is sent again whole: checking a prefix costs a
# round trip and a hash, more than re-sending a few MiB.
MIN_RESUME_BYTES: Final = 8 << 20
_SHA256SUM_LINE: Final = re.compile(r"^\\?([0-9a-fA-F]{64}) ")
_ERRNO_IN_TEXT: Final = re.compile(r"\[Errno (\d+)\]")
_SFTP_ERRNO: Final = {
    asyncssh.FX_NO_SUCH_FILE: "ENOENT",
    asyncssh.FX_NO_SUCH_PATH: "ENOENT",
    asyncssh.FX_PERMISSION_DENIED: "EACCES",
    asyncssh.FX_WRITE_PROTECT: "EROFS",
    asyncssh.FX_NO_SPACE_ON_FILESYSTEM: "ENOSPC",
    asyncssh.FX_QUOTA_EXCEEDED: "EDQUOT",
}


def split_host(host: str) -> tuple[str | None, str]:
    """`[user@]host` as (user or None, host); brackets around an IPv6 address are dropped."""
    user, at, name = host.strip().rpartition("@")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or (at and not user) or any(c.isspace() for c in host.strip()):
        raise ValueError(f"invalid SSH host {host!r}: expected [user@]host")
    return (user if at else None), name


def checked_relative(remote: PurePosixPath, *, allow_root: bool = False) -> PurePosixPath:
    """A path that stays inside the NAS root: relative, without `..`; raise ValueError."""
    path = PurePosixPath(remote)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"remote path {str(remote)!r} must be relative to the NAS root, no '..'")
    if not path.parts and not allow_root:
        raise ValueError("remote path names no file")
    return path


def transport_error(exc: BaseException, action: str) -> TransportError:
    """Evidence the router can classify, from an asyncssh or OS failure."""
    name = type(exc).__name__
    errno_name: str | None = None
    kind: str | None = None
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        kind = "auth.host_key"
    elif isinstance(exc, asyncssh.PermissionDenied):
        kind = "auth"
    elif isinstance(exc, asyncssh.KeyImportError):
        kind, errno_name = "config", "EINVAL"  # an unusable identity file: a human must fix it
    elif isinstance(exc, asyncssh.SFTPError):
        errno_name = _SFTP_ERRNO.get(exc.code)
    elif isinstance(exc, TimeoutError):  # asyncio's, anyio's and asyncssh's alike
        errno_name = "ETIMEDOUT"
    elif isinstance(exc, OSError) and not isinstance(exc, socket.gaierror):
        number = exc.errno
        if number is None:  # asyncio folds several refused addresses into one bare OSError
            found = _ERRNO_IN_TEXT.search(str(exc))
            number = int(found.group(1)) if found else None
        errno_name = errno.errorcode.get(number) if number else None
    message = f"{action}: {exc}" if str(exc) else f"{action}: {name}"
    return TransportError(MODE, message, errno_name=errno_name, exception=name, kind=kind)


def integrity_error(message: str) -> TransportError:
    """A copy on the NAS that is not the file we sent."""
    return TransportError(MODE, message, exception="ChecksumMismatch", kind="integrity")


@contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except (asyncssh.Error, OSError, asyncssh.KeyImportError) as exc:
        raise transport_error(exc, action) from exc


class _Link(NamedTuple):
    """One logged-in SSH connection and its SFTP session."""

    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient


class SshTransport:
    """Carries files to the NAS over SFTP; a file appears under its final name only verified."""

    mode = MODE

    def __init__(
        self,
        host: str,
        options: SshOptions,
        remote_root: str,
        *,
        known_hosts: Path | None = None,
        client_keys: Sequence[Path] | None = None,
        connect_timeout: float | None = None,
        block_size: int = BLOCK_SIZE,
        max_requests: int = MAX_REQUESTS,
        ciphers: str = PREFERRED_CIPHERS,
        lean_send: bool = True,
    ) -> None:
        self.user, self.host = split_host(host)
        self.port = options.port or 22
        root = PurePosixPath(remote_root)
        if not root.is_absolute() or ".." in root.parts:
            raise ValueError(f"remote root {remote_root!r} must be an absolute POSIX path")
        if block_size <= 0 or max_requests <= 0:
            raise ValueError("block_size and max_requests must be positive")
        self.remote_root = root
        given = [Path(p).expanduser() for p in options.user_known_hosts_files]
        default_known = [Path("~/.ssh/known_hosts").expanduser()]
        self.known_hosts = [known_hosts] if known_hosts else (given or default_known)
        keys = client_keys if client_keys is not None else options.identity_files
        self.client_keys = [Path(k).expanduser() for k in keys]
        self.connect_timeout = connect_timeout or options.connect_timeout or DEFAULT_CONNECT_TIMEOUT
        interval = options.server_alive_interval
        self.keepalive_interval = DEFAULT_KEEPALIVE_INTERVAL if interval is None else interval
        self.keepalive_count_max = options.server_alive_count_max or DEFAULT_KEEPALIVE_COUNT_MAX
        self.block_size = block_size
        self.max_requests = max_requests
        self.ciphers = ciphers
        # Skip asyncssh's per-packet IGNORE under AEAD ciphers (ssh_lean_send.py).
        self.lean_send = lean_send
        self.lean_send_active: bool | None = None  # whether the last connection skipped them
        self.hash_method: str | None = None  # "exec" or "readback": how the last sha256 was taken
        self._exec_hash_works: bool | None = None
        self.last_phases: dict[str, float] = {}  # seconds per phase of the last put

    @property
    def target(self) -> str:
        """`user@host:port` for messages."""
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def _load_known_hosts(self) -> asyncssh.SSHKnownHosts:
        present = [str(p) for p in self.known_hosts if p.is_file()]
        if not present:
            # No trusted key means no verification; we refuse rather than trust on first use.
            looked = ", ".join(str(p) for p in self.known_hosts)
            raise TransportError(
                MODE,
                f"host key verification failed for {self.target}: no known_hosts file ({looked})",
                exception="HostKeyNotVerifiable",
                kind="auth.host_key",
            )
        with _translated("read known_hosts"):
            return asyncssh.read_known_hosts(present)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        known = await anyio.to_thread.run_sync(self._load_known_hosts)
        keys: dict[str, object] = {}
        if self.client_keys:
            # Like IdentitiesOnly: the configured keys decide, not whatever an agent holds.
            keys = {"client_keys": [str(k) for k in self.client_keys], "agent_path": None}
        with _translated(f"connect {self.target}"), anyio.fail_after(self.connect_timeout + 5):
            conn = await asyncssh.connect(
                self.host,
                port=self.port,
                username=self.user if self.user else (),
                known_hosts=known,  # never None: that would switch host key checks off
                x509_trusted_certs=None,
                config=None,  # only the allowlisted flags apply, never ~/.ssh/config
                gss_host=None,
                password_auth=False,  # BatchMode: keys only, nothing ever prompts
                kbdint_auth=False,
                host_based_auth=False,
                encryption_algs=self.ciphers,
                connect_timeout=self.connect_timeout,
                login_timeout=self.connect_timeout,
                keepalive_interval=self.keepalive_interval,
                keepalive_count_max=self.keepalive_count_max,
                **keys,
            )
        # Only after the host key check and login: the handshake runs on stock asyncssh.
        self.lean_send_active = use_lean_send(conn) if self.lean_send else False
        return conn

    @asynccontextmanager
    async def _session(
        self,
    ) -> AsyncIterator[_Link]:
        conn = await self._connect()
        try:
            with _translated(f"start sftp on {self.target}"):
                sftp = await conn.start_sftp_client()
            try:
                yield _Link(conn, sftp)
            finally:
                sftp.exit()
        finally:
            conn.close()
            with anyio.move_on_after(2, shield=True):
                await conn.wait_closed()

    def _absolute(self, relative: PurePosixPath) -> PurePosixPath:
        return self.remote_root / relative

    async def probe(self) -> ProbeResult:
        """Can we log in and see the NAS root right now (bounded, never raises)?"""
        try:
            with anyio.fail_after(2 * self.connect_timeout + 5):
                async with self._session() as (_, sftp):
                    with _translated(f"stat {self.remote_root}"):
                        attrs = await sftp.stat(self.remote_root)
        except TransportError as exc:
            reason = f"{exc} [{exc.errno_name}]" if exc.errno_name else str(exc)
            return ProbeResult(False, reason, error=exc)
        except TimeoutError:
            return ProbeResult(False, f"{MODE}: probe of {self.target} timed out")
        except Exception as exc:  # a probe reports, whatever went wrong
            return ProbeResult(
                False, f"{MODE}: probe of {self.target}: {type(exc).__name__}: {exc}"
            )
        if attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
            return ProbeResult(False, f"{MODE}: {self.remote_root} on {self.target} is no folder")
        return ProbeResult(True, f"{MODE}: {self.remote_root} reachable on {self.target}")

    async def put(
        self,
        local: Path,
        remote: PurePosixPath,
        *,
        sha256: str,
        size: int,
        progress: ProgressFn | None = None,
        manifest: bytes | None = None,
    ) -> Delivery:
        """Upload to `<remote>.partial`, fsync, verify size and sha256 there, write `manifest`
        beside it, then rename to `remote` without replacing anything (model.Transport)."""
        final = self._absolute(checked_relative(remote))
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        beside = final.with_name(manifest_name(final.name))
        started = mark = time.monotonic()
        phases: dict[str, float] = {}

        def lap(phase: str) -> None:
            nonlocal mark
            phases[phase], mark = time.monotonic() - mark, time.monotonic()

        async with self._session() as link:
            lap("connect")
            sftp = link.sftp
            if await self._already_there(link, final, sha256, size):
                # A re-delivery (a drain after a crash) finds the verified copy in place.
                if manifest is not None:
                    await self._place(sftp, beside, manifest)
                if progress is not None:
                    progress(size, size)
                return Delivery(MODE, str(final), size, time.monotonic() - started, True)
            placed = False
            try:
                with _translated(f"upload {local.name} to {self.target}:{partial}"):
                    await sftp.makedirs(final.parent, exist_ok=True)
                    resume = await self._resume_point(link, partial, local, size)
                    lap("resume_check")
                    # "r+b" keeps the verified prefix; "wb" starts from an empty file.
                    mode = "r+b" if resume else "wb"
                    async with await sftp.open(partial, mode, block_size=0) as remote_file:
                        if resume:
                            await remote_file.truncate(resume)
                        await self._upload(sftp, remote_file, local, size, progress, resume)
                        lap("upload")
                        await self._sync_and_verify(link, remote_file, partial, sha256, size)
                        lap("sync_verify")
                # The manifest first: whoever finds the final name finds its manifest too.
                if manifest is not None:
                    placed = await self._place(sftp, beside, manifest)
                await self._publish(sftp, partial, final)
                lap("rename")
            except BaseException as exc:
                await self._discard(sftp, partial)
                if placed:  # written for a copy that never got its name
                    await self._discard(sftp, beside)
                if isinstance(exc, TransportError) and exc.exception == "SFTPFailure":
                    raise await self._explain_failure(sftp, exc, final.parent, size) from exc
                raise
            with _translated(f"stat {final}"):
                landed = (await sftp.stat(final)).size
            if landed != size:  # replaced between our rename and now
                raise integrity_error(f"checksum mismatch: {final} has {landed} bytes, not {size}")
        self.last_phases = phases
        seconds = time.monotonic() - started
        return Delivery(
            mode=MODE,
            remote_path=str(final),
            bytes=size,
            seconds=seconds,
            verified=True,
            resumed_from=resume,
        )

    async def _resume_point(
        self, link: _Link, partial: PurePosixPath, local: Path, size: int
    ) -> int:
        """Where an upload may continue: the prefix an interrupted one left in `partial`,
        once its sha256 on the NAS matches the local file's; else 0 (start over).

        Writes complete out of order, so the file's length is not what arrived in one
        piece: the last `max_requests` blocks before it may hold holes. The candidate
        steps back over them, and the hash then decides.
        """
        try:
            have = (await link.sftp.stat(partial)).size or 0
        except asyncssh.SFTPNoSuchFile:
            return 0
        block = min(self.block_size, link.sftp.limits.max_write_len or self.block_size)
        candidate = (min(have, size) // block - self.max_requests) * block
        if candidate < MIN_RESUME_BYTES:
            return 0
        digests: dict[str, str] = {}

        async def local_side() -> None:
            digests["local"] = await anyio.to_thread.run_sync(prefix_sha256, str(local), candidate)

        # Both sides hash at once: on a fast link the hashing, not the sending, is the cost.
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(local_side)
                digests["remote"] = await self._hash(link, partial, candidate, prefix=True)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        local_digest, remote_digest = digests["local"], digests["remote"]
        if remote_digest != local_digest:
            log.info(
                "%s:%s: the %d bytes left there do not match %s; uploading it whole",
                self.target,
                partial,
                candidate,
                local.name,
            )
            return 0
        log.info(
            "%s:%s: resuming after %d verified bytes of %d", self.target, partial, candidate, size
        )
        return candidate

    async def _already_there(
        self, link: _Link, final: PurePosixPath, sha256: str, size: int
    ) -> bool:
        """True when `final` holds this very file; raises when it holds another one."""
        with _translated(f"stat {final}"):
            try:
                landed = (await link.sftp.stat(final)).size
            except asyncssh.SFTPNoSuchFile:
                return False
            if landed == size and await self._hash(link, final, size) == sha256.lower():
                return True
        raise name_taken(MODE, f"{self.target}:{final}")

    async def _place(self, sftp: asyncssh.SFTPClient, path: PurePosixPath, data: bytes) -> bool:
        """Write a small file under `path` via `<path>.partial`, fsync, read back and a
        rename that replaces nothing. False when `path` already says the same."""
        with _translated(f"read {path}"):
            try:
                existing: bytes | None = await self._read(sftp, path, len(data) + (1 << 20))
            except asyncssh.SFTPNoSuchFile:
                existing = None
        if existing is not None:
            if same_manifest(existing, data):
                return False
            raise name_taken(MODE, f"{self.target}:{path}")
        temporary = path.with_name(path.name + PARTIAL_SUFFIX)
        try:
            with _translated(f"write {self.target}:{temporary}"):
                async with await sftp.open(temporary, "wb") as remote_file:
                    await remote_file.write(data)
                    await self._fsync(remote_file)
                if await self._read(sftp, temporary, len(data) + 1) != data:
                    raise integrity_error(f"{temporary} did not read back as written")
            await self._publish(sftp, temporary, path)
        except BaseException:
            await self._discard(sftp, temporary)
            raise
        return True

    async def _publish(
        self, sftp: asyncssh.SFTPClient, src: PurePosixPath, dst: PurePosixPath
    ) -> None:
        """Rename without replacing: SFTPv3 RENAME fails when `dst` exists (OpenSSH's
        sftp-server links, then unlinks), unlike the posix-rename extension, never used."""
        try:
            with _translated(f"rename {src} to {dst}"):
                await sftp.rename(src, dst)
        except TransportError as exc:
            with _translated(f"stat {dst}"):
                taken = await sftp.exists(dst)
            if taken:
                raise name_taken(MODE, f"{self.target}:{dst}") from exc
            raise

    async def _upload(
        self,
        sftp: asyncssh.SFTPClient,
        remote_file: asyncssh.SFTPClientFile,
        local: Path,
        size: int,
        progress: ProgressFn | None,
        start: int = 0,
    ) -> None:
        # Our own pipeline instead of sftp.put(): max_requests writes stay in flight without
        # per-completion rescans, the local file is read ahead off the event loop, and the
        # handle stays open for fsync.
        block = min(self.block_size, sftp.limits.max_write_len or self.block_size)
        slots = anyio.Semaphore(self.max_requests)
        done = start

        async def send(data: bytes, offset: int) -> None:
            nonlocal done
            try:
                await remote_file.write(data, offset)
            finally:
                slots.release()
            done += len(data)
            if progress is not None:
                progress(done, size)

        try:
            source = await anyio.to_thread.run_sync(partial(local.open, "rb", buffering=0))
            with source:
                # One batch queued while the next is read: the reads run ahead of the sends.
                batches_in, batches = anyio.create_memory_object_stream[Batch](1)
                async with anyio.create_task_group() as tg, batches:
                    feed = partial(feed_blocks, start=start)
                    tg.start_soon(feed, source.fileno(), block, batches_in)
                    async for batch in batches:
                        for offset, data in batch:
                            await slots.acquire()
                            tg.start_soon(send, data, offset)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if progress is not None and done == start:
            progress(start, size)

    async def _sync_and_verify(
        self,
        link: _Link,
        remote_file: asyncssh.SFTPClientFile,
        path: PurePosixPath,
        sha256: str,
        size: int,
    ) -> None:
        # Every write is acknowledged, so hashing can overlap the fsync: both see the
        # whole file, and the disk flush is the slow part on a NAS.
        async def sync() -> None:
            await self._fsync(remote_file)

        with _translated(f"stat {path}"):
            landed = (await link.sftp.stat(path)).size
        if landed != size:
            raise integrity_error(f"checksum mismatch: {path} has {landed} bytes, sent {size}")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sync)
                digest = await self._hash(link, path, size)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if digest != sha256.lower():
            raise integrity_error(f"checksum mismatch: {path} sha256 {digest}, expected {sha256}")

    async def _fsync(self, remote_file: asyncssh.SFTPClientFile) -> None:
        try:
            await remote_file.fsync()
        except asyncssh.SFTPOpUnsupported:
            log.info("%s has no fsync@openssh.com; relying on close()", self.target)

    async def fetch(self, remote: PurePosixPath, local: Path, *, sha256: str, size: int) -> None:
        """Copy a NAS file to `local` over SFTP, verified (model.Transport)."""
        path = self._absolute(checked_relative(remote))
        copied = FetchedCopy(MODE, f"{self.target}:{path}", local, sha256=sha256, size=size)
        try:
            async with self._session() as (_, sftp):
                with _translated(f"fetch {path}"):
                    async with await sftp.open(path, "rb", block_size=self.block_size) as src:
                        while True:
                            block: bytes = await src.read(self.block_size)
                            if not block:
                                break
                            await anyio.to_thread.run_sync(copied.write, block)
        except BaseException:
            copied.finish(failed=True)
            raise
        copied.finish()

    async def _read(self, sftp: asyncssh.SFTPClient, path: PurePosixPath, limit: int) -> bytes:
        """Up to `limit` bytes of a file (SFTP errors as they come)."""
        async with await sftp.open(path, "rb", block_size=self.block_size) as remote_file:
            data: bytes = await remote_file.read(limit)
        return data

    async def _discard(self, sftp: asyncssh.SFTPClient, path: PurePosixPath) -> None:
        # Best effort and shielded: runs while a cancelled or failed put unwinds.
        with anyio.move_on_after(10, shield=True):
            try:
                await sftp.remove(path)
            except (asyncssh.Error, OSError) as exc:
                log.debug("could not remove %s: %s", path, exc)

    async def _explain_failure(
        self, sftp: asyncssh.SFTPClient, exc: TransportError, folder: PurePosixPath, size: int
    ) -> TransportError:
        # OpenSSH's sftp-server reports ENOSPC as a bare "Failure"; free space tells them apart.
        try:
            with anyio.fail_after(10):
                free = await sftp.statvfs(folder)
        except (asyncssh.Error, OSError):
            return exc
        available = free.bavail * (free.frsize or free.bsize)
        if available >= size:
            return exc
        message = f"no space left on device: {folder} has {available} bytes free, need {size}"
        return TransportError(MODE, message, errno_name="ENOSPC", exception=exc.exception)

    async def _hash(
        self, link: _Link, path: PurePosixPath, size: int, *, prefix: bool = False
    ) -> str:
        """sha256 of the file on the NAS, or with `prefix` of its first `size` bytes."""
        if self._exec_hash_works is not False:
            digest = await self._hash_by_exec(link.conn, path, size, prefix=prefix)
            if digest is not None:
                self.hash_method = "exec"
                return digest
        self.hash_method = "readback"
        with _translated(f"read back {path}"):
            return await self._hash_by_readback(link.sftp, path, size if prefix else None)

    async def _hash_by_exec(
        self, conn: asyncssh.SSHClientConnection, path: PurePosixPath, size: int, *, prefix: bool
    ) -> str | None:
        # Hashing on the NAS saves reading the file back; SFTP-only accounts refuse it.
        # The command runs in the NAS account's shell: the path is quoted, nothing else
        # in it comes from outside.
        quoted = shlex.quote(str(path))
        command = f"head -c {size} -- {quoted} | sha256sum" if prefix else f"sha256sum -- {quoted}"
        try:
            # stdin at EOF: an SFTP-only ForceCommand then exits instead of waiting on us.
            done = await conn.run(
                command, check=False, timeout=max(60.0, size / 20e6), stdin=asyncssh.DEVNULL
            )
        except (asyncssh.Error, OSError) as exc:  # a lost session: the read-back will tell
            log.info("remote sha256sum on %s failed (%s); reading back", self.target, exc)
            return None
        out = done.stdout.decode() if isinstance(done.stdout, bytes) else done.stdout or ""
        found = _SHA256SUM_LINE.match(out) if done.exit_status == 0 else None
        # A definite answer is remembered: an account without exec is not asked again.
        self._exec_hash_works = found is not None
        if found is None:
            log.info("no sha256sum on %s (exit %s); reading back", self.target, done.exit_status)
            return None
        return found.group(1).lower()

    async def _hash_by_readback(
        self, sftp: asyncssh.SFTPClient, path: PurePosixPath, length: int | None = None
    ) -> str:
        digest = hashlib.sha256()
        remaining = length
        async with await sftp.open(
            path, "rb", block_size=self.block_size, max_requests=self.max_requests
        ) as remote_file:
            while remaining is None or remaining > 0:
                want = _READBACK_CHUNK if remaining is None else min(remaining, _READBACK_CHUNK)
                chunk = cast(bytes, await remote_file.read(want))
                if not chunk:
                    break
                # hashlib drops the GIL on large buffers, so this overlaps the next reads.
                await anyio.to_thread.run_sync(digest.update, chunk)
                if remaining is not None:
                    remaining -= len(chunk)
        return digest.hexdigest()

    async def list_dir(self, remote_dir: PurePosixPath) -> list[RemoteEntry]:
        """Regular files in a folder relative to the NAS root ([] if it does not exist)."""
        folder = self._absolute(checked_relative(remote_dir, allow_root=True))
        async with self._session() as (_, sftp):
            with _translated(f"list {folder}"):
                try:
                    names = await sftp.readdir(folder)
                except asyncssh.SFTPNoSuchFile:
                    return []
        entries = [
            RemoteEntry(
                name=str(n.filename), size=n.attrs.size or 0, mtime=float(n.attrs.mtime or 0)
            )
            for n in names
            if n.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
        ]
        return sorted(entries, key=lambda e: e.name)

    async def remove(self, remote: PurePosixPath) -> None:
        """Delete one file relative to the NAS root; a file already gone is fine."""
        path = self._absolute(checked_relative(remote))
        async with self._session() as (_, sftp):
            with _translated(f"remove {path}"):
                try:
                    await sftp.remove(path)
                except asyncssh.SFTPNoSuchFile:
                    pass

    async def sha256(self, remote: PurePosixPath) -> str:
        """Hex sha256 of a file on the NAS: sha256sum there, else read back over SFTP."""
        path = self._absolute(checked_relative(remote))
        async with self._session() as link:
            with _translated(f"stat {path}"):
                size = (await link.sftp.stat(path)).size or 0
            return await self._hash(link, path, size)

    async def read_small(self, remote: PurePosixPath, limit: int = 1 << 20) -> bytes:
        """Read a small file (a manifest) from the NAS; refuse one above `limit` bytes."""
        path = self._absolute(checked_relative(remote))
        async with self._session() as (_, sftp):
            with _translated(f"read {path}"):
                data = await self._read(sftp, path, limit + 1)
        if len(data) > limit:
            raise TransportError(MODE, f"{path} is larger than {limit} bytes", errno_name="EFBIG")
        return data

    async def read_many(
        self, remotes: list[PurePosixPath], limit: int = 1 << 20
    ) -> dict[PurePosixPath, bytes]:
        """Read several small files (manifests) over one session; missing ones are left out."""
        paths = {remote: self._absolute(checked_relative(remote)) for remote in remotes}
        found: dict[PurePosixPath, bytes] = {}
        if not paths:
            return found
        async with self._session() as (_, sftp):
            for remote, path in paths.items():
                with _translated(f"read {path}"):
                    try:
                        data = await self._read(sftp, path, limit + 1)
                    except asyncssh.SFTPNoSuchFile:
                        continue
                if len(data) <= limit:  # an oversized "manifest" is none of ours
                    found[remote] = data
        return found
