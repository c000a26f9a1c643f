"""A real terminal for CLI tests: one command in a tmux pane on a private tmux server.

The server has its own socket and an empty config (never the user's), and `kill`
stops it by its pid. Everything the command writes to the terminal, escape sequences
included, is also logged raw (pipe-pane) for the test to count redraws in. The
command waits for a go (`start`) until that log is running, so no byte is missed.

The command runs under a small sh that writes its exit status to a file: tmux 3.3a
sometimes leaves an exited pane's process unreaped for many seconds (pane_dead 1, no
pane_dead_status), so tmux's own report of the status cannot be waited for.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from tests.support.servers import missing, wait_until

TMUX_TIMEOUT_S = 10.0
SESSION = "t"


def tmux_binary() -> str:
    """tmux from PATH (fails under CI=true when absent)."""
    found = shutil.which("tmux")
    if found is None:
        missing("tmux (Debian: the tmux package)")
    assert found is not None
    return found


class Terminal:
    """One tmux pane of `width` x `height` running `command` with `env`."""

    def __init__(
        self,
        directory: Path,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        width: int = 120,
        height: int = 40,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "tmux.sock"
        self.config = directory / "tmux.conf"
        self.raw_path = directory / "pane.raw"
        self.status_path = directory / "exit-status"
        # The pane stays after its command ends, so its exit status can be read.
        self.config.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n")
        self.command = list(command)
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}
        self.width, self.height = width, height
        self.server_pid: int | None = None

    def tmux(self, *args: str) -> str:
        """Run one tmux command against this terminal's server; its stdout."""
        done = subprocess.run(
            [tmux_binary(), "-S", str(self.socket), "-f", str(self.config), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=TMUX_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def start(self) -> Terminal:
        """Open the pane, start logging it raw, then let the command run."""
        # `trap : INT`: Ctrl-C reaches the command (its process group is the terminal's),
        # and the sh waits for it and records its status instead of dying with it.
        script = 'trap : INT; read -r _ || exit 1; out=$1; shift; "$@"; echo $? > "$out"'
        gated = ["sh", "-c", script, "sh", str(self.status_path), *self.command]
        self.tmux(
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            str(self.width),
            "-y",
            str(self.height),
            shlex.join(gated),
        )
        self.server_pid = int(self.tmux("display-message", "-p", "-t", SESSION, "#{pid}"))
        self.tmux("pipe-pane", "-t", SESSION, f"cat >> {shlex.quote(str(self.raw_path))}")
        self.tmux("send-keys", "-t", SESSION, "Enter")  # the go
        return self

    def screen(self) -> str:
        """What the pane shows now (the visible rows only), trailing blank rows dropped."""
        return self.tmux("capture-pane", "-p", "-t", SESSION).rstrip("\n")

    def history(self) -> str:
        """Everything the pane still holds: its scrollback and the visible rows."""
        return self.tmux("capture-pane", "-p", "-S", "-", "-t", SESSION)

    def raw(self) -> str:
        """Every byte the command wrote so far, escape sequences included."""
        return self.raw_path.read_bytes().decode(errors="replace") if self.raw_path.exists() else ""

    def send_keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", SESSION, *keys)

    def exit_status(self) -> int | None:
        """The command's exit status once it has ended, else None."""
        try:
            text = self.status_path.read_text()
        except FileNotFoundError:
            return None
        return int(text) if text.endswith("\n") else None

    def wait_exit(self, timeout: float) -> int:
        try:
            wait_until(lambda: self.exit_status() is not None, timeout, "the command to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the pane shows:\n{self.history()}") from None
        status = self.exit_status()
        assert status is not None
        return status

    def kill(self) -> None:
        """Stop the tmux server (and so the pane's command), by its pid if it lingers."""
        if self.server_pid is None:
            return
        try:
            self.tmux("kill-server")
        except (AssertionError, subprocess.TimeoutExpired):
            pass
        try:
            server = psutil.Process(self.server_pid)
            if "tmux" not in server.name():  # gone, and its pid taken by another
                return
            server.wait(timeout=5)
        except psutil.NoSuchProcess:
            return
        except psutil.TimeoutExpired:
            os.kill(self.server_pid, signal.SIGKILL)
