"""The real daemon as the benchmarks run it: `python -m selfheal run` in a temporary HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from selfheal.control.client import ControlClient

READY_TIMEOUT_S = 60.0


def bench_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without our own settings, with HOME = `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "OTEL_"))}
    env.update(extra or {})
    env["HOME"] = str(home)
    return env


def wait_ready(client: ControlClient, proc: subprocess.Popen[bytes]) -> None:
    """Until the daemon says it is running (exit if it dies or takes too long)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} before it was ready")
        try:
            if client.call("status", {})["state"] == "running":
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the daemon was not ready within {READY_TIMEOUT_S}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def running_daemon(
    home: Path, env: Mapping[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], ControlClient]]:
    """A ready daemon for the config under `home`, stopped on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfheal", "run"],
        env=dict(env),
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = ControlClient(home / ".joelclaw" / "selfheal.sock", timeout=30)
    try:
        wait_ready(client, proc)
        yield proc, client
    finally:
        stop(proc)
