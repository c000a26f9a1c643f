"""Run the real daemon as a subprocess with its own HOME, and talk to its socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from selfheal.control.client import ControlClient
from tests.support.servers import wait_until

READY_TIMEOUT_S = 40.0


class DaemonProcess:
    """`python -m selfheal run` in a temporary HOME."""

    def __init__(
        self, home: Path, *, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.home = home
        self.config_path = home / ".joelclaw" / "system-bus.config.json"
        self.socket_path = home / ".joelclaw" / "selfheal.sock"
        self.state_dir = home / ".joelclaw" / "selfheal"
        self.log_path = home / "daemon.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        if config is not None:
            self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the config atomically (temp file + rename), like most editors."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_name(".config.tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "OTEL_"))}
        env.update({"HOME": str(self.home), "SELFHEAL_LOG_LEVEL": "DEBUG"})
        env.update(self.extra_env)
        return env

    def start(self, *, wait: bool = True) -> DaemonProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "selfheal", "run"],
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
            )
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> ControlClient:
        return ControlClient(self.socket_path, timeout=10)

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self.client().call(method, params or {})

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.process.returncode} before ready:\n{self.log()}"
            )
        return bool(self.status()["state"] == "running")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        try:
            wait_until(self._ready, timeout, "daemon readiness")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()}") from None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit in {timeout}s:\n{self.log()}") from None

    def stop(self, timeout: float = 30) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def redis_servers(self) -> list[psutil.Process]:
        """Live redis-server processes serving this daemon's state dir."""
        marker = str(self.state_dir)
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            ours = any(marker in part for part in cmdline) and "redis-server" in " ".join(cmdline)
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found


class Daemons:
    """The daemons a test starts in one HOME; `kill_all` leaves none (nor their Redis)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.made: list[DaemonProcess] = []

    def start(
        self,
        *,
        config: dict[str, Any] | None = None,
        wait: bool = True,
        log_name: str = "daemon.log",
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        """Start one more daemon (waiting until it answers, unless `wait` is False)."""
        daemon = DaemonProcess(self.home, config=config, env=env)
        daemon.log_path = self.home / log_name
        self.made.append(daemon)
        return daemon.start(wait=wait)

    def kill_all(self) -> None:
        """Kill every daemon started here and any redis-server it left."""
        for daemon in self.made:
            daemon.kill()
            for proc in daemon.redis_servers():
                proc.kill()
