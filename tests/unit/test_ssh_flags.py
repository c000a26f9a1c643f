"""nasSshFlags parse into typed options; anything outside the allowlist is refused."""

from __future__ import annotations

import pytest

from selfheal.core.ssh_flags import SshOptions, parse_ssh_flags

ORIGINAL_DEFAULT = (
    "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=2"
)


def test_original_default_string_parses() -> None:
    assert parse_ssh_flags(ORIGINAL_DEFAULT) == SshOptions(
        batch_mode=True, connect_timeout=10.0, server_alive_interval=5.0, server_alive_count_max=2
    )


def test_empty_string_means_no_options() -> None:
    assert parse_ssh_flags("") == SshOptions()
    assert parse_ssh_flags("   ") == SshOptions()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("-o BatchMode=no", SshOptions(batch_mode=False)),
        ("-oBatchMode=YES", SshOptions(batch_mode=True)),
        ("-o batchmode=yes", SshOptions(batch_mode=True)),
        ("-o ConnectTimeout=2.5", SshOptions(connect_timeout=2.5)),
        ("-o ServerAliveInterval=0", SshOptions(server_alive_interval=0.0)),
        ("-o SERVERALIVECOUNTMAX=7", SshOptions(server_alive_count_max=7)),
        ("-o Port=2222", SshOptions(port=2222)),
        ("-p 2222", SshOptions(port=2222)),
        ("-p2222", SshOptions(port=2222)),
        ("-o IdentityFile=~/.ssh/nas", SshOptions(identity_files=("~/.ssh/nas",))),
        ("-i /k/a -i /k/b", SshOptions(identity_files=("/k/a", "/k/b"))),
        ("-i '/k/with space'", SshOptions(identity_files=("/k/with space",))),
        (
            "-o UserKnownHostsFile=/etc/ssh/nas_known_hosts",
            SshOptions(user_known_hosts_files=("/etc/ssh/nas_known_hosts",)),
        ),
        ("-o 'ConnectTimeout = 3'", SshOptions(connect_timeout=3.0)),
    ],
)
def test_each_allowed_option(flags: str, expected: SshOptions) -> None:
    assert parse_ssh_flags(flags) == expected


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ("-o StrictHostKeyChecking=no", "StrictHostKeyChecking"),
        ("-o ProxyCommand=nc %h %p", "ProxyCommand"),
        ("-v", "-v"),
        ("-o BatchMode=yes stray", "stray"),
        ("-o BatchMode", "BatchMode"),
        ("-o BatchMode yes", "BatchMode"),
        ("-o BatchMode=maybe", "BatchMode"),
        ("-o ConnectTimeout=soon", "ConnectTimeout"),
        ("-o ConnectTimeout=0", "ConnectTimeout"),
        ("-o ServerAliveCountMax=0", "ServerAliveCountMax"),
        ("-o Port=70000", "Port"),
        ("-p 22 -o Port=22", "Port"),
        ("-o BatchMode=yes -o BatchMode=no", "BatchMode"),
        ("-p", "-p"),
        ("-o 'unclosed", "unclosed"),
        ("-o=BatchMode=yes", "BatchMode"),
    ],
)
def test_rejected_flags_name_the_flag(flags: str, named: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_ssh_flags(flags)
    assert named in str(caught.value)
