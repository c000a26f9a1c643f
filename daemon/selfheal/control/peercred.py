"""Who is on the other end of a Unix socket: pid (when known) and uid, from the kernel."""

from __future__ import annotations

import errno
import socket
import struct
import sys

# Linux: struct ucred { pid_t pid; uid_t uid; gid_t gid; } -- uid/gid unsigned, so
# uids above 2**31 (some container and directory-service setups) decode correctly.
_UCRED = struct.Struct("iII")
# macOS/BSD <sys/un.h>: getsockopt level SOL_LOCAL, options LOCAL_PEERCRED / LOCAL_PEERPID.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_LOCAL_PEERPID = 0x002
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
_XUCRED = struct.Struct("IIh2x16I")
_XUCRED_VERSION = 0


def _linux(sock: socket.socket) -> tuple[int | None, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    return pid, uid


def _bsd(sock: socket.socket) -> tuple[int | None, int]:
    raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
    version, uid = struct.unpack_from("II", raw)
    if version != _XUCRED_VERSION:
        raise OSError(errno.EPROTO, f"unexpected xucred version {version}")
    pid: int | None = None
    if sys.platform == "darwin":
        try:
            pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
        except OSError:
            pid = None  # the uid is what matters; the pid is only for messages
    return pid, uid


def peer_credentials(sock: socket.socket) -> tuple[int | None, int]:
    """Return (pid or None, uid) of the process connected to a Unix stream socket."""
    if sys.platform.startswith("linux"):
        return _linux(sock)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        return _bsd(sock)
    raise OSError(errno.ENOTSUP, f"peer credentials are not supported on {sys.platform}")


def peer_uid(sock: socket.socket) -> int:
    """Return the uid of the process connected to a Unix stream socket."""
    return peer_credentials(sock)[1]
