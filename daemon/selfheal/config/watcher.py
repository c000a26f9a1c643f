"""Watch the config file and ask for a reload when it changes.

Editors save in place or by writing a temp file and renaming it over the
original, so the parent folder is watched (a rename replaces the file's inode).
On Linux the watch is an inotify descriptor the event loop waits on: nothing
wakes while nothing changes, and an event naming the file asks for a reload at
once. Besides, and on every other platform, the file's stat signature is
compared periodically (every 5 s with inotify, four times a second without),
which also covers a folder that appears later and a symlink whose target moves.

Only stat() runs here: the file is read by the reload, which checks what is at
the path first (a FIFO or /dev/zero is refused unread) and runs off the event
loop. A large file therefore costs one rejected reload, not a read per check.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

log = logging.getLogger("selfheal.config.watcher")

# How often the stat signature is compared, with and without inotify.
CHECK_EVERY_S = 5.0
POLL_EVERY_S = 0.25
# Events of the folder that can change what the config path holds.
_IN_MODIFY = 0x002
_IN_ATTRIB = 0x004
_IN_CLOSE_WRITE = 0x008
_IN_MOVED_FROM = 0x040
_IN_MOVED_TO = 0x080
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_IGNORED = 0x8000
_MASK = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
)
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, name length

Signature = tuple[int, ...] | None


def file_signature(path: Path) -> Signature:
    """Identity, type, size and times of the path and of what it points to; None if absent."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except OSError:
        return None
    return (
        link.st_ino,
        link.st_mtime_ns,
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


class _Inotify:
    """An inotify watch on one folder (Linux), read without blocking."""

    def __init__(self, folder: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(folder), _MASK) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, f"cannot watch {folder}")
        self.fd = fd
        self.folder_gone = False

    def names(self) -> set[str]:
        """Names of the folder's entries that changed since the last call."""
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        names: set[str] = set()
        at = 0
        while at + _HEADER.size <= len(data):
            _wd, mask, _cookie, length = _HEADER.unpack_from(data, at)
            raw = data[at + _HEADER.size : at + _HEADER.size + length]
            at += _HEADER.size + length
            if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED):
                self.folder_gone = True
            names.add(os.fsdecode(raw.rstrip(b"\0")))
        return names

    def close(self) -> None:
        os.close(self.fd)


def _inotify(folder: Path) -> _Inotify | None:
    """A watch on `folder`, or None where inotify is not available (then: polling)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return _Inotify(folder)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            log.warning("cannot watch %s with inotify (%s); polling instead", folder, exc)
        return None


class ConfigWatcher:
    """Service: calls `on_change` after each change of `path`."""

    name = "config-watcher"

    def __init__(self, path: Path, on_change: Callable[[str], Awaitable[object]]) -> None:
        self.path = path
        self._on_change = on_change
        self.last_signature = file_signature(path)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        task_status.started()
        while True:
            watch = _inotify(self.path.parent)
            if watch is None:  # no inotify here, or no folder yet: poll
                await anyio.sleep(POLL_EVERY_S)
                await self._check(named=False)
                continue
            try:
                await self._watch(watch)
            finally:
                watch.close()

    async def _watch(self, watch: _Inotify) -> None:
        """Check on every event and every CHECK_EVERY_S; return when the folder is gone."""
        while not watch.folder_gone:
            with anyio.move_on_after(CHECK_EVERY_S):
                await anyio.wait_readable(watch.fd)
            await self._check(named=self.path.name in watch.names())

    async def _check(self, *, named: bool) -> None:
        signature = file_signature(self.path)
        # Two writes in one timestamp tick can leave the signature equal: an event
        # naming the file asks for a reload anyway (the reload compares content).
        if signature == self.last_signature and not named:
            return
        self.last_signature = signature
        log.info("config file changed: %s", self.path)
        await self._on_change("watch")
