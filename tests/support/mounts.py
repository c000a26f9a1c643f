"""Real tmpfs mounts for transport tests: made on demand, always unmounted afterwards."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import missing

MOUNT_TIMEOUT_S = 15.0


def _run(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, capture_output=True, timeout=MOUNT_TIMEOUT_S, check=False)


def mount_tmpfs(path: Path, size: str, *, read_only: bool = False) -> None:
    """Mount a fresh tmpfs of `size` (e.g. "64m") on `path`, read-only when asked."""
    options = f"size={size},mode=0755" + (",ro" if read_only else "")
    done = _run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    if done.returncode != 0:
        raise OSError(f"mount tmpfs on {path} failed: {done.stderr.decode(errors='replace')}")


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on `path`."""
    return os.path.ismount(path)


def unmount(path: Path) -> None:
    """Unmount `path` (every mount stacked there); lazily if something still holds it open."""
    for _ in range(8):  # bounded: a test stacks at most a couple of mounts on one path
        if not os.path.ismount(path):
            return
        if _run(["umount", str(path)]).returncode != 0:
            _run(["umount", "-l", str(path)])
    if os.path.ismount(path):
        raise OSError(f"could not unmount {path}")


@functools.cache
def tmpfs_unavailable() -> str | None:
    """Why tmpfs mounts cannot be made here, or None when they can (tried once per run)."""
    if os.geteuid() != 0:
        return "mounting tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount not found"
    probe = Path(tempfile.mkdtemp(prefix="sh-mnt-probe-"))
    try:
        mount_tmpfs(probe, "1m")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot mount tmpfs: {exc}"
    else:
        unmount(probe)
        return None
    finally:
        if not os.path.ismount(probe):
            probe.rmdir()


class Mounts:
    """Makes tmpfs mounts for one test and unmounts every one of them in `cleanup`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.made: list[Path] = []

    def tmpfs(self, name: str, size: str = "64m", *, read_only: bool = False) -> Path:
        """A real mount point (tmpfs of `size`) at base/name; skips or fails if impossible."""
        return self.mount_at(self.base / name, size, read_only=read_only)

    def mount_at(self, path: Path, size: str = "64m", *, read_only: bool = False) -> Path:
        """A real tmpfs mounted on `path` (created if needed); skips or fails if impossible."""
        reason = tmpfs_unavailable()
        if reason is not None:
            missing(f"tmpfs mounts ({reason})")
        path.mkdir(parents=True, exist_ok=True)
        mount_tmpfs(path, size, read_only=read_only)
        self.made.append(path)
        return path

    def unmount(self, path: Path) -> None:
        """Take one mount away mid-test (the NAS share goes away)."""
        unmount(path)

    def cleanup(self) -> None:
        """Unmount everything this test mounted."""
        for path in reversed(self.made):
            unmount(path)
