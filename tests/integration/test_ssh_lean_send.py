"""The lean asyncssh send path: active with the pinned asyncssh, guarded, uploads still verified."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import anyio
import asyncssh
import pytest

from selfheal.backup.model import TransportError
from selfheal.backup.transports.ssh import SshTransport
from selfheal.backup.transports.ssh_lean_send import (
    AEAD_CIPHERS,
    TESTED_ASYNCSSH,
    UNAVAILABLE,
    LeanSendConnection,
    lean_send_unavailable,
    use_lean_send,
    version_tuple,
)
from tests.support.sshd import SshServer, transport_for

WAIT_S = 60.0
SIZE = 2 << 20  # 64 channel data packets of 32 KiB
REMOTE = PurePosixPath("redis/lean.rdb")
SENT_PACKET = re.compile(r"(?:^|\] )Sent (MSG_[A-Z_]+) \(")  # after asyncssh's [conn=..] prefix


@pytest.fixture
def sent_packets(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Names of the SSH packets asyncssh sends, in order (its packet-level debug log)."""
    asyncssh.set_debug_level(3)
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    names: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = SENT_PACKET.search(record.getMessage())
            if found:
                names.append(found.group(1))

    handler = Collect()
    logging.getLogger("asyncssh").addHandler(handler)
    try:
        yield names
    finally:
        logging.getLogger("asyncssh").removeHandler(handler)
        asyncssh.set_debug_level(1)


def ignores_after_channel_open(names: list[str]) -> int:
    """IGNORE packets sent once the first channel was opened (after login)."""
    assert "MSG_CHANNEL_OPEN" in names, names[:20]
    after = names[names.index("MSG_CHANNEL_OPEN") :]
    assert after.count("MSG_CHANNEL_DATA") >= SIZE // (32 << 10)
    return after.count("MSG_IGNORE")


async def put_random(transport: SshTransport, server: SshServer, tmp_path: Path) -> None:
    """Upload a random file; it must arrive verified and byte for byte."""
    local = tmp_path / "dump.rdb"
    data = os.urandom(SIZE)
    local.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    with anyio.fail_after(WAIT_S):
        delivery = await transport.put(local, REMOTE, sha256=digest, size=SIZE)
    assert delivery.verified and delivery.bytes == SIZE
    final = server.remote_root / str(REMOTE)
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest
    assert not final.with_name(final.name + ".partial").exists()


def test_pinned_asyncssh_takes_the_lean_path() -> None:
    assert UNAVAILABLE is None, UNAVAILABLE
    first, first_unknown = TESTED_ASYNCSSH
    assert first <= version_tuple(asyncssh.__version__) < first_unknown


@pytest.mark.parametrize("version", ["2.24.0", "2.25.0", "2.25.0rc1", "3.0", "garbage"])
def test_untested_asyncssh_versions_stay_stock(version: str) -> None:
    reason = lean_send_unavailable(version)
    assert reason is not None and version in reason


def test_version_tuple() -> None:
    assert version_tuple("2.24.1") == (2, 24, 1)
    assert version_tuple("2.25.0rc1") == (2, 25)
    assert version_tuple("") == ()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "cipher", ["aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com", "aes128-ctr"]
)
async def test_upload_skips_ignore_packets_only_under_aead(
    sshd: SshServer, tmp_path: Path, sent_packets: list[str], cipher: str
) -> None:
    transport = transport_for(sshd, ciphers=cipher)
    await put_random(transport, sshd, tmp_path)
    aead = cipher in AEAD_CIPHERS
    assert transport.lean_send_active is aead
    ignores = ignores_after_channel_open(sent_packets)
    assert ignores == 0 if aead else ignores > 0


@pytest.mark.anyio
async def test_stock_send_path_when_switched_off(
    sshd: SshServer, tmp_path: Path, sent_packets: list[str]
) -> None:
    """The control: asyncssh's own path sends an IGNORE before each packet, as counted above."""
    transport = transport_for(sshd, lean_send=False)
    await put_random(transport, sshd, tmp_path)
    assert transport.lean_send_active is False
    data = sent_packets.count("MSG_CHANNEL_DATA")
    assert ignores_after_channel_open(sent_packets) >= data


@pytest.mark.anyio
async def test_lean_connection_keeps_host_key_checks_and_state(sshd: SshServer) -> None:
    transport = transport_for(sshd)
    with anyio.fail_after(WAIT_S):
        conn = await transport._connect()
        try:
            assert isinstance(conn, LeanSendConnection)
            assert use_lean_send(conn)  # a second call leaves it as it is
            result = await conn.run("echo ok", check=True)
            assert result.stdout == "ok\n"
        finally:
            conn.close()
            await conn.wait_closed()
    stranger = transport_for(sshd, known_hosts=sshd.mismatched_known_hosts)
    with anyio.fail_after(WAIT_S), pytest.raises(TransportError) as caught:
        await stranger._connect()
    assert caught.value.kind == "auth.host_key"


@pytest.mark.anyio
async def test_lean_connection_survives_rekeying_mid_upload(
    sshd: SshServer, tmp_path: Path, sent_packets: list[str]
) -> None:
    """Backups larger than asyncssh's rekey limit re-key mid-upload; the bytes stay exact."""
    local = tmp_path / "big.rdb"
    data = os.urandom(SIZE)
    local.write_bytes(data)
    remote = sshd.remote_root / "rekeyed.rdb"
    with anyio.fail_after(WAIT_S):
        async with asyncssh.connect(
            "127.0.0.1",
            port=sshd.port,
            username=sshd.user,
            known_hosts=str(sshd.known_hosts),
            client_keys=[str(sshd.user_key)],
            agent_path=None,
            encryption_algs=["aes128-gcm@openssh.com"],
            rekey_bytes=256 << 10,  # a new key exchange every 256 KiB sent
        ) as conn:
            assert use_lean_send(conn)
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), str(remote))
                assert (await sftp.stat(str(remote))).size == SIZE  # after the re-keys
    assert remote.read_bytes() == data
    assert sent_packets.count("MSG_KEXINIT") >= 4  # the first exchange and several re-keys
    after_open = sent_packets[sent_packets.index("MSG_CHANNEL_OPEN") :]
    assert "MSG_IGNORE" not in after_open
