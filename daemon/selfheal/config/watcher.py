"""Watch the config file and ask for a reload when it changes.

Editors save in place or by writing a temp file and renaming it over the
original. The parent folder is watched (a rename replaces the file's inode): any
event naming the file asks for a reload. The watcher also wakes once a second and
compares the file's stat signature, so an edit made before the first inotify
registration, or a folder that appears later, is still seen.

Only stat() runs here: the file is read by the reload, which checks what is at
the path first (a FIFO or /dev/zero is refused unread) and runs off the event
loop. A large file therefore costs one rejected reload, not a read every second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from watchfiles import awatch

log = logging.getLogger("selfheal.config.watcher")

WAKE_EVERY_MS = 1000
DEBOUNCE_MS = 50
STEP_MS = 10

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
            folder = self.path.parent
            if not await anyio.to_thread.run_sync(folder.is_dir):
                # Nothing to watch yet; the folder may be created later.
                await anyio.sleep(WAKE_EVERY_MS / 1000)
                await self._check(named=False)
                continue
            async for changes in awatch(
                folder,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                rust_timeout=WAKE_EVERY_MS,
                yield_on_timeout=True,
                recursive=False,
                # Our own filter below: the default one ignores editor swap files only.
                watch_filter=None,
            ):
                named = any(Path(changed) == self.path for _, changed in changes)
                await self._check(named=named)
                if not await anyio.to_thread.run_sync(folder.is_dir):
                    break

    async def _check(self, *, named: bool) -> None:
        signature = await anyio.to_thread.run_sync(file_signature, self.path)
        # Two writes in one timestamp tick can leave the signature equal: an event
        # naming the file asks for a reload anyway (the reload compares content).
        if signature == self.last_signature and not named:
            return
        self.last_signature = signature
        log.info("config file changed: %s", self.path)
        await self._on_change("watch")
