"""A leaner asyncssh send path for bulk uploads: no empty IGNORE packet before every packet.

Once keys are in place, asyncssh sends an empty SSH_MSG_IGNORE ahead of every packet: the
countermeasure for CBC ciphers' predictable IVs (RFC 4251 section 9.3.1). Under an AEAD
cipher (AES-GCM, chacha20-poly1305) every packet has its own nonce, so the extra packet
protects nothing, yet it doubles the per-packet work (two encryptions, two socket writes)
of a CPU-bound upload. OpenSSH never sends them. Other ciphers keep asyncssh's behaviour.

This relies on one asyncssh internal, `SSHConnection.send_packet`. It is checked once at
import (tested version range, signature, constant); if anything differs, connections
stay stock and one warning says why.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Final

import asyncssh
from asyncssh import connection as asyncssh_connection
from asyncssh.packet import SSHPacketLogger

log = logging.getLogger("selfheal.backup.ssh")

# Nonce-based ciphers: a packet's encryption does not depend on the packet before it.
AEAD_CIPHERS: Final = frozenset(
    {"aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com"}
)
# asyncssh releases whose send path was read and tested: [first, first unknown).
TESTED_ASYNCSSH: Final = ((2, 24, 1), (2, 25))
MSG_IGNORE: Final = 2  # RFC 4253 section 11.2
EMPTY_STRING: Final = b"\0\0\0\0"  # an SSH string of length 0: the inserted IGNORE's payload
_SEND_PACKET_PARAMS: Final = (
    ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("pkttype", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    ("args", inspect.Parameter.VAR_POSITIONAL),
    ("handler", inspect.Parameter.KEYWORD_ONLY),
)


def version_tuple(text: str) -> tuple[int, ...]:
    """`2.24.1` as (2, 24, 1); a non-numeric part ends the tuple (`2.25.0rc1` -> (2, 25))."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def lean_send_unavailable(version: str = asyncssh.__version__) -> str | None:
    """Why the installed asyncssh cannot take the lean send path, or None if it can."""
    first, first_unknown = TESTED_ASYNCSSH
    if not first <= version_tuple(version) < first_unknown:
        return f"asyncssh {version} is outside the tested range"
    method = getattr(asyncssh.SSHClientConnection, "send_packet", None)
    if method is None:
        return "asyncssh has no SSHClientConnection.send_packet"
    try:
        params = tuple((p.name, p.kind) for p in inspect.signature(method).parameters.values())
    except (TypeError, ValueError) as exc:
        return f"SSHClientConnection.send_packet has no readable signature: {exc}"
    if params != _SEND_PACKET_PARAMS:
        return f"SSHClientConnection.send_packet{inspect.signature(method)} has changed"
    if getattr(asyncssh_connection, "MSG_IGNORE", None) != MSG_IGNORE:
        return "asyncssh.connection.MSG_IGNORE has changed"
    return None


UNAVAILABLE: Final = lean_send_unavailable()


class LeanSendConnection(asyncssh.SSHClientConnection):
    """An SSH client connection that sends no empty IGNORE packets under an AEAD cipher."""

    def send_packet(
        self, pkttype: int, *args: bytes, handler: SSHPacketLogger | None = None
    ) -> None:
        """Send an SSH packet; the per-packet IGNORE is dropped while the cipher is AEAD."""
        if (
            pkttype == MSG_IGNORE
            and args == (EMPTY_STRING,)
            and self.get_extra_info("send_cipher") in AEAD_CIPHERS
        ):
            return
        super().send_packet(pkttype, *args, handler=handler)


@functools.cache
def _warn_unavailable(reason: str) -> None:
    log.warning("asyncssh send path left stock (uploads are slower): %s", reason)


def use_lean_send(conn: asyncssh.SSHClientConnection) -> bool:
    """Move a logged-in connection to the lean send path; True if it now skips the IGNOREs."""
    if UNAVAILABLE is not None:
        _warn_unavailable(UNAVAILABLE)
        return False
    if type(conn) is asyncssh.SSHClientConnection:
        # Same layout, one overridden method: the connection keeps all its state.
        try:
            conn.__class__ = LeanSendConnection
        except TypeError as exc:  # a layout this module does not know: stay stock
            _warn_unavailable(f"cannot switch the connection class: {exc}")
            return False
    elif not isinstance(conn, LeanSendConnection):
        return False
    return conn.get_extra_info("send_cipher") in AEAD_CIPHERS
