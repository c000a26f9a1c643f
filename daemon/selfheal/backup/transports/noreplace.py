"""Give a finished file its final name without ever replacing a file that has that name.

`os.replace` (and `rename(2)`) silently replace the target: a second delivery under an
existing name would destroy the first backup. Here an existing target always fails
with FileExistsError and leaves both files as they were.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Final

log = logging.getLogger("selfheal.backup.mount")

# link(2) answers these on filesystems without hard links (SMB/CIFS, FAT, some FUSE).
_NO_HARD_LINKS: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
# An exclusive rename the kernel or the filesystem does not offer.
_NO_EXCLUSIVE_RENAME: Final = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
)
_AT_FDCWD: Final = -100
_RENAME_NOREPLACE: Final = 1  # Linux renameat2 flag
_RENAME_EXCL: Final = 4  # macOS renamex_np flag


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; FileExistsError (nothing changed) if `dst` exists."""
    try:
        # Atomic and portable: link() fails with EEXIST instead of replacing.
        os.link(src, dst, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
    else:
        os.unlink(src)  # a crash before this leaves a second name, swept as a stale .partial
        return
    if exclusive_rename(src, dst):
        return
    checked_rename(src, dst)


def exclusive_rename(src: Path, dst: Path) -> bool:
    """renameat2(RENAME_NOREPLACE) on Linux, renamex_np(RENAME_EXCL) on macOS.

    True when renamed; False when neither the system nor the filesystem offers it;
    FileExistsError when `dst` exists.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    old, new = os.fsencode(src), os.fsencode(dst)
    if sys.platform == "darwin":
        call = getattr(libc, "renamex_np", None)
        result = call(old, new, ctypes.c_uint(_RENAME_EXCL)) if call is not None else None
    else:
        call = getattr(libc, "renameat2", None)
        result = (
            call(_AT_FDCWD, old, _AT_FDCWD, new, ctypes.c_uint(_RENAME_NOREPLACE))
            if call is not None
            else None
        )
    if result is None:
        return False
    if result == 0:
        return True
    number = ctypes.get_errno()
    if number in _NO_EXCLUSIVE_RENAME:
        return False
    raise OSError(number, os.strerror(number), str(src), None, str(dst))


def checked_rename(src: Path, dst: Path) -> None:
    """Rename after checking `dst` is free: the last resort where the filesystem has no
    atomic way (what OpenSSH's sftp-server does there too). Only a writer creating the
    same name in between could be replaced; artifact names are unique, so none does."""
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    log.debug("%s: no hard links or exclusive rename here; checked rename", dst.parent)
    os.rename(src, dst)
