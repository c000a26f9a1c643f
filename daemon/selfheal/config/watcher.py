"""Watch the config file and ask for a reload when its content changes.

Editors save in place or by writing a temp file and renaming it over the
original; both change the content, so we compare a content hash rather than
interpret event kinds. The parent folder is watched (a rename replaces the
file's inode), and the watcher also wakes once a second, so an edit made
between start-up and the first inotify registration is still seen.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from watchfiles import awatch

log = logging.getLogger("selfheal.config.watcher")

WAKE_EVERY_MS = 1000
DEBOUNCE_MS = 50
STEP_MS = 10


def content_signature(path: Path) -> str | None:
    """sha256 of the file's bytes, or None when it does not exist or cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Service: calls `on_change` after each content change of `path`."""

    name = "config-watcher"

    def __init__(self, path: Path, on_change: Callable[[str], Awaitable[object]]) -> None:
        self.path = path
        self._on_change = on_change
        self.last_signature = content_signature(path)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled."""
        task_status.started()
        while True:
            folder = self.path.parent
            if not folder.is_dir():
                # Nothing to watch yet; the folder may be created later.
                await anyio.sleep(WAKE_EVERY_MS / 1000)
                await self._check()
                continue
            async for _changes in awatch(
                folder,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                rust_timeout=WAKE_EVERY_MS,
                yield_on_timeout=True,
                recursive=False,
                # Our own filter below: the default one ignores editor swap files only.
                watch_filter=None,
            ):
                await self._check()
                if not folder.is_dir():
                    break

    async def _check(self) -> None:
        signature = content_signature(self.path)
        if signature == self.last_signature:
            return
        self.last_signature = signature
        log.info("config file changed: %s", self.path)
        await self._on_change("watch")
