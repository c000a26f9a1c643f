"""`selfheal launchd|systemd install|status|uninstall` on stand-ins of launchctl and
systemctl that really start the daemon the job file describes (and stop it)."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from click.testing import CliRunner, Result

from selfheal.cli import cli
from selfheal.control.client import ControlClient
from tests.support import service_standin
from tests.support.servers import missing, wait_until

pytestmark = pytest.mark.slow


class Host:
    """A HOME with stand-in service managers on PATH and a config for the daemon."""

    def __init__(self, home: Path, label: str) -> None:
        self.home = home
        self.bin = service_standin.install(home / "standin")
        self.state_path = home / "standin" / "service.json"
        self.state_path.write_text(
            json.dumps(
                {
                    "label": label,
                    "loaded": False,
                    "pid": None,
                    "program": "",
                    "working_directory": str(home),
                    "argv": [],
                    "log": str(home / "service.log"),
                }
            )
        )
        self.config = home / "my config %d" / "selfheal.json"  # a space and a % on purpose
        self.config.parent.mkdir()
        self.config.write_text(json.dumps({"selfheal": {"drainTimeoutSeconds": 2}}))
        self.socket = home / ".joelclaw" / "selfheal.sock"

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            service_standin.STATE_ENV: str(self.state_path),
            "XDG_CONFIG_HOME": "",
        }

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env())

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.state_path.read_text())
        return result

    def daemon_pid(self) -> int:
        def answering() -> bool:
            return bool(ControlClient(self.socket, timeout=5).call("ping", {})["pong"])

        wait_until(answering, 40, "the installed daemon answering")
        pid: int = ControlClient(self.socket, timeout=5).call("ping", {})["pid"]
        return pid

    def kill_all(self) -> None:
        pid = self.state().get("pid")
        if pid and psutil.pid_exists(pid):
            os.kill(pid, signal.SIGKILL)
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.home) in " ".join(proc.info.get("cmdline") or []):
                proc.kill()


@pytest.fixture
def launchd_host(short_home: Path) -> Iterator[Host]:
    host = Host(short_home, "com.joelclaw.selfheal")
    try:
        yield host
    finally:
        host.kill_all()


@pytest.fixture
def systemd_host(short_home: Path) -> Iterator[Host]:
    host = Host(short_home, "selfheal")
    try:
        yield host
    finally:
        host.kill_all()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_launchd_install_loads_the_daemon_reinstall_replaces_it_uninstall_removes_it(
    launchd_host: Host,
) -> None:
    host = launchd_host
    plist_path = host.home / "Library" / "LaunchAgents" / "com.joelclaw.selfheal.plist"
    dry = host.run("launchd", "install", "--dry-run", "--config", str(host.config))
    assert dry.exit_code == 0, dry.output
    assert "would run: launchctl bootstrap" in dry.output and not plist_path.exists()

    done = host.run("launchd", "install", "--config", str(host.config))
    assert done.exit_code == 0, done.output
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["ProgramArguments"][1:] == ["-m", "selfheal", "run"]
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
    assert plist["ExitTimeOut"] > 2 and plist["ProcessType"] == "Standard"
    assert plist["EnvironmentVariables"]["SELFHEAL_CONFIG"] == str(host.config)
    assert plist["StandardErrorPath"].startswith(str(host.home / "Library" / "Logs" / "selfheal"))
    first = host.daemon_pid()

    shown = host.run("launchd", "status")
    assert shown.exit_code == 0 and f"pid {first}" in shown.output, shown.output
    assert "NOT this install" not in shown.output
    assert json.loads(host.run("launchd", "status", "--json").output)["config"] == str(host.config)

    def service(*args: str) -> dict[str, Any]:
        found = json.loads(host.run(*args, "doctor", "--json").output)["checks"]
        [check] = [c for c in found if c["name"] == "service"]
        return dict(check)

    assert service("--config", str(host.config))["status"] == "ok"
    other = service()  # the default config path: not what the job runs with
    assert other["status"] == "fail" and str(host.config) in other["detail"]

    again = host.run("launchd", "install", "--config", str(host.config))
    assert again.exit_code == 0, again.output
    assert "launchctl bootout" in again.output
    wait_until(lambda: gone(first), 20, "the first daemon to stop")
    second = host.daemon_pid()
    assert second != first

    removed = host.run("launchd", "uninstall")
    assert removed.exit_code == 0, removed.output
    wait_until(lambda: gone(second), 20, "the daemon to stop")
    assert not plist_path.exists()
    assert "not loaded" in host.run("launchd", "status").output


def test_an_invalid_config_is_not_installed(launchd_host: Host) -> None:
    host = launchd_host
    host.config.write_text('{"selfheal": {"drainTimeoutSeconds": "soon"}}')
    result = host.run("launchd", "install", "--config", str(host.config))
    assert result.exit_code == 2 and "drainTimeoutSeconds" in result.output
    assert not (host.home / "Library" / "LaunchAgents").exists()
    assert host.state()["loaded"] is False


def test_without_launchctl_install_says_so(launchd_host: Host) -> None:
    host = launchd_host
    (host.bin / "launchctl").unlink()
    env = {**host.env(), "PATH": str(host.bin)}
    result = CliRunner().invoke(cli, ["launchd", "install", "--config", str(host.config)], env=env)
    assert result.exit_code == 1 and "launchctl is not on PATH" in result.output


def test_systemd_install_starts_the_unit_and_uninstall_stops_it(systemd_host: Host) -> None:
    host = systemd_host
    unit_path = host.home / ".config" / "systemd" / "user" / "selfheal.service"
    done = host.run("systemd", "install", "--config", str(host.config))
    assert done.exit_code == 0, done.output
    unit = unit_path.read_text()
    for line in ("Restart=on-failure", "StartLimitBurst=5", "TimeoutStopSec=32", "Type=exec"):
        assert line in unit
    assert host.state()["enabled"] is True
    # The config path's space and % survive the unit file's quoting and specifiers.
    assert host.state()["env"]["SELFHEAL_CONFIG"] == str(host.config)
    pid = host.daemon_pid()
    assert json.loads(host.run("systemd", "status", "--json").output)["config"] == str(host.config)
    shown = host.run("systemd", "status")
    assert shown.exit_code == 0 and f"pid {pid}" in shown.output, shown.output

    removed = host.run("systemd", "uninstall")
    assert removed.exit_code == 0, removed.output
    wait_until(lambda: gone(pid), 20, "the daemon to stop")
    assert not unit_path.exists() and host.state()["loaded"] is False


def systemd_analyze_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on one unit file (fails under CI=true without the tool)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing("systemd-analyze (Debian: the systemd package)")
    assert tool is not None
    # The system manager's view, not --user: `--user` needs a running user manager
    # (its runtime dir), which a test box lacks. Nothing in our unit differs between the
    # two: the directives are the same, and default.target and network-online.target
    # exist in both. It checks every line's syntax and that ExecStart's program exists.
    return subprocess.run(
        [tool, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""},
        check=False,
    )


def test_the_installed_systemd_unit_passes_systemd_analyze_verify(systemd_host: Host) -> None:
    host = systemd_host
    unit_path = host.home / ".config" / "systemd" / "user" / "selfheal.service"
    done = host.run("systemd", "install", "--config", str(host.config))
    assert done.exit_code == 0, done.output
    assert unit_path.is_file()

    # The check is real here: a unit whose program does not exist is refused.
    broken = host.home / "broken" / "broken.service"
    broken.parent.mkdir()
    broken.write_text('[Service]\nType=exec\nExecStart="/nonexistent/python" "-m" "x"\n')
    refused = systemd_analyze_verify(broken)
    assert refused.returncode != 0 and "/nonexistent/python" in refused.stderr, refused

    verified = systemd_analyze_verify(unit_path)
    output = verified.stdout + verified.stderr
    # Only about our unit: lines about other units on the box are not ours to judge.
    ours = [line for line in output.splitlines() if "selfheal" in line]
    assert verified.returncode == 0 and ours == [], output
