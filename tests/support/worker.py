"""A real worker under a stand-in service manager, for the watchdog tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support import service_standin
from tests.support.servers import free_port, wait_until

APP = Path(__file__).with_name("worker_app.py")
LABEL = "com.example.worker"


class Worker:
    """worker_app.py as a launchd job (or systemd unit) played by the stand-ins."""

    def __init__(self, folder: Path, name: str = "w") -> None:
        self.name = name
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.state_path = folder / "service.json"
        self.bin = service_standin.install(folder)
        self.plist = folder / f"{LABEL}.plist"
        self.plist.write_text("<plist/>")  # only its presence matters to the stand-in
        self.write_state(
            {
                "label": LABEL,
                "loaded": False,
                "pid": None,
                "program": sys.executable,
                "working_directory": str(folder),
                # -P: the script's folder (tests/support, with its http.py) is not on the path.
                "argv": [sys.executable, "-P", str(APP), str(self.port), str(folder)],
                "log": str(folder / "stdout.log"),
                "calls": [],
            }
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/inngest"

    def env(self) -> dict[str, str]:
        """What the daemon needs to find the stand-ins and their state."""
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            service_standin.STATE_ENV: str(self.state_path),
        }

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def write_state(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    def calls(self, verb: str) -> list[list[str]]:
        return [c for c in self.state()["calls"] if verb in c]

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The worker's entry in selfheal.watchdog.workers."""
        worker: dict[str, Any] = {
            "name": self.name,
            "sdkUrl": self.url,
            "launchdLabel": LABEL,
            "launchdPlist": str(self.plist),
            "logFiles": [str(self.folder / "worker.log")],
            "probeIntervalSeconds": 0.5,
            "probeTimeoutSeconds": 1,
            "failureThreshold": 2,
            "restartCooldownMinutes": 0,
            "maxRestartsPerWindow": 3,
            "restartWindowMinutes": 60,
            "startGraceSeconds": 0,
            "verifyTimeoutSeconds": 15,
            "expectedProgram": sys.executable,
            "expectedWorkingDirectory": str(self.folder),
        }
        worker.update(overrides)
        return worker

    def start(self) -> None:
        """Load and start the job through the stand-in, as launchd would at login."""
        env = {**os.environ, **self.env()}
        subprocess.run(
            [str(self.bin / "launchctl"), "bootstrap", f"gui/{os.getuid()}", str(self.plist)],
            env=env,
            check=True,
        )
        self.wait_healthy()

    def pid(self) -> int | None:
        pid: int | None = self.state()["pid"]
        return pid

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 15) -> None:
        wait_until(self.healthy, timeout, f"worker {self.name} answering")

    def set_mode(self, mode: str) -> None:
        (self.folder / "mode").write_text(mode)

    def kill(self) -> None:
        """SIGKILL the worker (its job stays loaded: launchd would not restart it
        without KeepAlive, which is the case the watchdog exists for)."""
        pid = self.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.healthy(), 5, "worker gone")

    def registrations(self) -> int:
        path = self.folder / "registered"
        return len(path.read_text().split()) if path.exists() else 0

    def stop(self) -> None:
        """Kill whatever the test left running."""
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
