"""One daemon per state dir, and a state dir that stays in place while it runs.

Two daemons on one state dir would run two embedded Redis servers on the same
files and spool into the same folders. The control socket's lock alone cannot
prevent that: deleting the folder holding it (say `rm -rf ~/.joelclaw`) removes
the socket and its lock, and a second daemon would find nothing in its way.

On Linux the instance lock is a name in the abstract Unix socket namespace,
derived from the state dir's path: it lives in the kernel, no file removal can
take it, and it is released when the process dies however it dies. Elsewhere it
is an flock on `<stateDir>/daemon.lock`, which `StateDirGuard` takes again on a
fresh file if the old one vanishes.

`StateDirGuard` is the service that notices the state dir vanishing and
re-creates it (0700), logging what happened; the control socket and the embedded
Redis notice their own files and rebuild them (see control/server.py and
embedded.py).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import resource
import socket
import sys
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from selfheal.control.peercred import peer_credentials
from selfheal.errors import DaemonAlreadyRunning

log = logging.getLogger("selfheal.instance")

# How often the guard looks (a stat call or two, on the event loop: local metadata):
# soon enough that a deleted folder is back before an operator's next command, rare
# enough that an idle daemon stays asleep.
CHECK_EVERY_S = 5.0


# Descriptors the daemon wants: the control socket's connections (at most
# MAX_CONNECTIONS) plus Redis pools, transfers, span files and log tails beside them.
WANTED_FDS = 4096


def raise_fd_limit(wanted: int = WANTED_FDS) -> int:
    """Raise the soft nofile limit toward `wanted` (never above the hard limit, never
    lower); return the soft limit now in force. macOS starts launchd agents at 256."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def lock_exclusively(path: Path, refusal: str) -> int:
    """flock `path` (created 0600) without waiting; the descriptor to keep open.
    Raises DaemonAlreadyRunning with `refusal` when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DaemonAlreadyRunning(refusal) from None
    return fd


def _abstract_name(state_dir: Path) -> bytes:
    digest = hashlib.sha256(os.fsencode(os.path.abspath(state_dir))).hexdigest()[:32]
    return b"\0selfheal-instance-" + digest.encode()


class InstanceLock:
    """Held for the daemon's lifetime; `acquire` raises DaemonAlreadyRunning if taken."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lock_file = state_dir / "daemon.lock"
        self._sock: socket.socket | None = None
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def abstract(self) -> bool:
        """True where the lock is a kernel name rather than a file."""
        return sys.platform.startswith("linux")

    def acquire(self) -> None:
        """Take the lock, or say which daemon holds it."""
        if self.abstract:
            self._bind_abstract()
        else:
            self._lock_file()

    def _bind_abstract(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(_abstract_name(self.state_dir))
            sock.listen(1)  # never accepted: only so a second daemon can learn our pid
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise DaemonAlreadyRunning(
                f"another selfheal daemon{self._holder()} is already running on state dir "
                f"{self.state_dir}"
            ) from None
        os.set_inheritable(sock.fileno(), False)
        self._sock = sock

    def _holder(self) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(_abstract_name(self.state_dir))
                return f" (pid {peer_credentials(probe)[0]})"
            except OSError:
                return ""

    def _lock_file(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = lock_exclusively(
            self.lock_file,
            f"another selfheal daemon holds {self.lock_file}: it is already running on "
            f"state dir {self.state_dir}",
        )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        st = os.fstat(fd)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._identity = (st.st_dev, st.st_ino)

    def file_lost(self) -> bool:
        """True when the lock is a file and that file is no longer at its path."""
        if self.abstract:
            return False
        try:
            st = os.stat(self.lock_file)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def retake(self) -> None:
        """Lock a fresh file after the old one vanished (non-Linux only)."""
        self._lock_file()

    def release(self) -> None:
        """Drop the lock (the process exiting does the same)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            # The file stays: unlinking a lock file lets a waiter lock an orphaned inode.
            os.close(self._fd)
            self._fd = None


def ensure_state_dir(state_dir: Path) -> bool:
    """Create the state dir 0700 if it is missing; True when it had to be created."""
    if state_dir.is_dir():
        return False
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return True


class StateDirGuard:
    """Service: holds the instance lock, and puts the state dir (and a file lock)
    back when they vanish. It starts first, so a second daemon stops before it
    touches the socket or starts a Redis."""

    name = "state-guard"

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lock = InstanceLock(state_dir)
        self.recreated = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take the lock, then check every CHECK_EVERY_S until cancelled."""
        await anyio.to_thread.run_sync(ensure_state_dir, self.state_dir)
        self.lock.acquire()
        try:
            task_status.started()
            while True:
                await anyio.sleep(CHECK_EVERY_S)
                self.check()
        finally:
            self.lock.release()

    def check(self) -> None:
        """One look; re-creates what is missing and says so."""
        if ensure_state_dir(self.state_dir):
            self.recreated += 1
            log.warning(
                "state dir %s was removed while the daemon ran; re-created it (0700)",
                self.state_dir,
            )
        if self.lock.file_lost():
            log.warning("instance lock %s was removed; taking it again", self.lock.lock_file)
            self.lock.retake()
