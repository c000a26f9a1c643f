"""A real OpenSSH sshd on a loopback port, with throwaway keys, for SSH transport tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from selfheal.backup.transports.ssh import SshTransport
from selfheal.core.ssh_flags import parse_ssh_flags
from tests.support.servers import free_port, missing, wait_until

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"


def install_sshd_if_missing() -> bool:
    """Install openssh-server with apt-get when sshd is absent and we are root; True if present."""
    if SSHD.exists():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False

    def apt_get(*args: str) -> int:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = subprocess.DEVNULL
        command = ["apt-get", *args]
        return subprocess.run(command, stdout=quiet, stderr=quiet, env=env, timeout=600).returncode

    install = ("install", "-y", "--no-install-recommends", "openssh-server")
    if apt_get(*install) != 0:
        # A fresh image often has no package lists yet: refresh them once and retry.
        apt_get("update")
        apt_get(*install)
    return SSHD.exists()


def generate_key(path: Path, comment: str) -> Path:
    """A fresh passphrase-less ed25519 key pair at `path` and `path.pub`."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return path


def public_key(path: Path) -> str:
    """`type base64` of a key pair, without its comment."""
    kind, blob, *_ = (path.with_name(path.name + ".pub")).read_text().split()
    return f"{kind} {blob}"


class SshServer:
    """One sshd on 127.0.0.1 with its own host key, authorized user key and known_hosts files."""

    def __init__(self, directory: Path, *, force_internal_sftp: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.force_internal_sftp = force_internal_sftp
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.remote_root = directory / "nas"  # what tests use as the NAS root
        self.config_path = directory / "sshd_config"
        self.log_path = directory / "sshd.log"
        self.host_key = directory / "host_ed25519"
        self.other_host_key = directory / "other_host_ed25519"  # never served: a mismatch
        self.user_key = directory / "user_ed25519"
        self.other_user_key = directory / "stranger_ed25519"  # never authorized
        self.authorized_keys = directory / "authorized_keys"
        self.known_hosts = directory / "known_hosts"
        self.mismatched_known_hosts = directory / "known_hosts.mismatch"

    @property
    def user(self) -> str:
        """The local user; sshd runs as root here, so it can log in as anyone."""
        return psutil.Process().username()

    @property
    def host(self) -> str:
        """`user@host` as `transport.nasSshHost` spells it."""
        return f"{self.user}@127.0.0.1"

    def flags(self, *, known_hosts: Path | None = None, identity: Path | None = None) -> str:
        """An `nasSshFlags` string in the original's style, pointing at this server's files."""
        return (
            "-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 "
            f"-o ServerAliveCountMax=2 -p {self.port} "
            f"-o UserKnownHostsFile={known_hosts or self.known_hosts} "
            f"-o IdentityFile={identity or self.user_key}"
        )

    def _write_files(self) -> None:
        for key, comment in (
            (self.host_key, "selfheal-test-host"),
            (self.other_host_key, "selfheal-test-other-host"),
            (self.user_key, "selfheal-test-user"),
            (self.other_user_key, "selfheal-test-stranger"),
        ):
            if not key.exists():
                generate_key(key, comment)
        self.authorized_keys.write_text(public_key(self.user_key) + "\n")
        pattern = f"[127.0.0.1]:{self.port}"
        self.known_hosts.write_text(f"{pattern} {public_key(self.host_key)}\n")
        self.mismatched_known_hosts.write_text(f"{pattern} {public_key(self.other_host_key)}\n")
        self.remote_root.mkdir(exist_ok=True)
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"PidFile {self.directory / 'sshd.pid'}",
            "StrictModes no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        if self.force_internal_sftp:
            # An SFTP-only account, as many NAS boxes offer: exec requests get no shell.
            lines.append("ForceCommand internal-sftp")
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> SshServer:
        """Start sshd in the foreground and wait until it greets a client."""
        self._write_files()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # its privilege-separation dir
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._greets, 15, f"sshd on port {self.port}")
        return self

    def _greets(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise AssertionError(f"sshd exited with {self.process.returncode}: {log[-2000:]}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")

    def log(self) -> str:
        """What sshd logged so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, *, kill: bool = False) -> None:
        """Stop the listener and every session process it forked (by pid, never by name)."""
        if self.process is None:
            return
        # Sessions outlive the listener's SIGTERM, and a stopped server must drop them too.
        # They go first, while the listener is still alive to reap them at once.
        try:
            sessions = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            sessions = []
        for child in sessions:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(sessions, timeout=10)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.process.wait(timeout=15)

    def wait_closed(self, timeout: float = 10) -> None:
        """Wait until nothing accepts on the port any more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                return
            time.sleep(0.05)
        raise AssertionError(f"port {self.port} still accepts after {timeout}s")


def running_sshd(directory: Path, *, force_internal_sftp: bool = False) -> Iterator[SshServer]:
    """A started sshd in `directory` for a fixture to yield; killed afterwards."""
    if not install_sshd_if_missing():
        missing("OpenSSH sshd (/usr/sbin/sshd; scripts/lib/install-system-packages.sh installs it)")
    if os.geteuid() != 0:  # sshd needs root for /run/sshd and its privilege separation
        missing("root, to run a test sshd")
    server = SshServer(directory, force_internal_sftp=force_internal_sftp).start()
    try:
        yield server
    finally:
        server.stop(kill=True)


def lean_send_from_env() -> bool:
    """selfheal.nas.leanSshSend as CI sets it for its second SSH run
    (SELFHEAL_SSH_LEAN_SEND=0: the stock asyncssh send path)."""
    return os.environ.get("SELFHEAL_SSH_LEAN_SEND", "1").lower() not in ("0", "false", "no", "off")


def transport_for(
    server: SshServer, flags: str = "-o BatchMode=yes", **overrides: object
) -> SshTransport:
    """A transport for `server` with its known_hosts and user key given explicitly."""
    options = parse_ssh_flags(f"{flags} -p {server.port}")
    kwargs: dict[str, object] = {
        "known_hosts": server.known_hosts,
        "client_keys": [server.user_key],
        "lean_send": lean_send_from_env(),
        **overrides,
    }
    return SshTransport(server.host, options, str(server.remote_root), **kwargs)  # type: ignore[arg-type]
