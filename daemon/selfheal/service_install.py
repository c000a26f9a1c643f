"""Install the daemon as a launchd agent (macOS) or a systemd user unit (Linux).

Both run this install's own Python (`<venv>/bin/python -m selfheal run`, the venv
path kept as it is, not resolved to the base interpreter) with the config path
in SELFHEAL_CONFIG, restart it only after an abnormal exit, and give it longer
to stop than its drain deadline. The job file is written whole under a temporary
name and renamed into place (never half-written under its final name), checked,
then loaded; installing over an installed job unloads the old one first. Every
command is an argument list, bounded in time.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from selfheal.commands import CommandError, run_command_blocking
from selfheal.config.template import write_atomic
from selfheal.watchdog.managers import JobInfo, parse_launchctl_print, parse_systemctl_show

LABEL: Final = "com.joelclaw.selfheal"
UNIT: Final = "selfheal.service"
TEMPLATE: Final = f"{LABEL}.plist"
# Past the drain deadline the daemon cancels what is left and exits; the service
# manager must wait at least that long plus the embedded Redis's own stop.
STOP_MARGIN_S: Final = 30
# PATH for the job: this install's bin folder first, then the usual system ones
# (launchd starts agents with a bare PATH; redis-server, ssh and plutil live here).
SYSTEM_PATH: Final = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


# Installing, removing or asking about the job failed (the message says where).
InstallError = CommandError


@dataclass
class Report:
    """What an install or uninstall did (or, with --dry-run, would do)."""

    path: Path
    content: str
    commands: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path),
            "commands": [" ".join(c) for c in self.commands],
            "notes": self.notes,
        }


def python_executable() -> Path:
    """This install's Python as started (a venv's python, not the interpreter it links to)."""
    return Path(os.path.abspath(sys.executable))


# -- launchd -----------------------------------------------------------------------------


def _template() -> dict[str, Any]:
    """The plist template: shipped in the package, or the source tree's launchd/."""
    packaged = resources.files("selfheal").joinpath("launchd", TEMPLATE)
    if packaged.is_file():
        data = packaged.read_bytes()
    else:
        data = (Path(__file__).resolve().parents[2] / "launchd" / TEMPLATE).read_bytes()
    loaded: dict[str, Any] = plistlib.loads(data)
    return loaded


def launchd_paths(home: Path) -> tuple[Path, Path]:
    """The agent's plist and its log folder."""
    return home / "Library" / "LaunchAgents" / TEMPLATE, home / "Library" / "Logs" / "selfheal"


def render_plist(
    *, python: Path, config: Path, home: Path, drain_timeout_s: float
) -> dict[str, Any]:
    """The agent's plist for this install and config."""
    plist = _template()
    _, logs = launchd_paths(home)
    plist["ProgramArguments"] = [str(python), "-m", "selfheal", "run"]
    plist["EnvironmentVariables"] = {
        "PATH": f"{python.parent}:{SYSTEM_PATH}",
        "SELFHEAL_CONFIG": str(config),
    }
    plist["WorkingDirectory"] = str(home)
    plist["ExitTimeOut"] = int(drain_timeout_s) + STOP_MARGIN_S
    plist["StandardOutPath"] = str(logs / "selfheal.out.log")
    plist["StandardErrorPath"] = str(logs / "selfheal.err.log")
    return plist


def _validate_plist(path: Path, expected: dict[str, Any]) -> None:
    if plistlib.loads(path.read_bytes()) != expected:
        raise InstallError(f"{path}: reading the written plist back gave something else")
    if shutil.which("plutil"):
        run_command_blocking(["plutil", "-lint", str(path)])


def _domain() -> str:
    return f"gui/{os.getuid()}"


def launchd_job() -> JobInfo:
    """The agent as launchd has it loaded (loaded False when it is not)."""
    result = run_command_blocking(["launchctl", "print", f"{_domain()}/{LABEL}"], check=False)
    if result.returncode != 0:
        return JobInfo(loaded=False)
    return parse_launchctl_print(result.stdout)


def install_launchd(
    *, config: Path, home: Path, drain_timeout_s: float, dry_run: bool = False
) -> Report:
    """Write, check and load the agent (replacing a loaded one)."""
    plist_path, logs = launchd_paths(home)
    plist = render_plist(
        python=python_executable(), config=config, home=home, drain_timeout_s=drain_timeout_s
    )
    content = plistlib.dumps(plist)
    report = Report(plist_path, content.decode())
    loaded = launchd_job().loaded if not dry_run or shutil.which("launchctl") else False
    if loaded:
        report.commands.append(["launchctl", "bootout", f"{_domain()}/{LABEL}"])
    report.commands.append(["launchctl", "bootstrap", _domain(), str(plist_path)])
    if dry_run:
        return report
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(plist_path, content.decode())
    _validate_plist(plist_path, plist)
    if loaded:
        run_command_blocking(report.commands[0])
    bootstrap = run_command_blocking(report.commands[-1], check=False)
    if bootstrap.returncode != 0:
        # Older launchctl, or a domain that refuses bootstrap: the legacy verb.
        report.notes.append(f"bootstrap failed ({bootstrap.stderr.strip()[:200]}); used load -w")
        legacy = ["launchctl", "load", "-w", str(plist_path)]
        report.commands[-1] = legacy
        run_command_blocking(legacy)
    return report


def uninstall_launchd(*, home: Path) -> Report:
    """Unload the agent (if loaded) and remove its plist."""
    plist_path, _ = launchd_paths(home)
    report = Report(plist_path, "")
    if launchd_job().loaded:
        command = ["launchctl", "bootout", f"{_domain()}/{LABEL}"]
        if run_command_blocking(command, check=False).returncode != 0:
            command = ["launchctl", "unload", "-w", str(plist_path)]
            run_command_blocking(command)
        report.commands.append(command)
    if plist_path.exists():
        plist_path.unlink()
        report.notes.append(f"removed {plist_path}")
    else:
        report.notes.append(f"{plist_path} was not there")
    return report


def bound_to_this_install(job: JobInfo) -> bool:
    """Whether the loaded job runs this install's Python."""
    return job.program == str(python_executable())


# -- systemd -----------------------------------------------------------------------------


def _unit_quote(value: str) -> str:
    """One argument of a unit file's command line or Environment= (specifiers escaped)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def systemd_unit_path(env: Mapping[str, str], home: Path) -> Path:
    """Where a user unit goes ($XDG_CONFIG_HOME/systemd/user, else ~/.config/...)."""
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    return base / "systemd" / "user" / UNIT


def render_unit(*, python: Path, config: Path, home: Path, drain_timeout_s: float) -> str:
    """The user unit for this install and config."""
    command = " ".join(_unit_quote(a) for a in (str(python), "-m", "selfheal", "run"))
    path = f"PATH={python.parent}:{SYSTEM_PATH}"
    return "\n".join(
        [
            "# Written by `selfheal systemd install`; `selfheal systemd uninstall` removes it.",
            "[Unit]",
            "Description=selfheal: self-healing NAS backup orchestrator",
            "After=network-online.target",
            "StartLimitIntervalSec=300",
            "StartLimitBurst=5",
            "",
            "[Service]",
            "Type=exec",
            f"ExecStart={command}",
            # A path setting takes its value as written (quotes would be part of it);
            # only specifiers are expanded, so `%` is doubled.
            f"WorkingDirectory={str(home).replace('%', '%%')}",
            f"Environment={_unit_quote(path)}",
            f"Environment={_unit_quote(f'SELFHEAL_CONFIG={config}')}",
            "Restart=on-failure",
            "RestartSec=10",
            "KillMode=mixed",
            f"TimeoutStopSec={int(drain_timeout_s) + STOP_MARGIN_S}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def install_systemd(
    *,
    config: Path,
    home: Path,
    env: Mapping[str, str],
    drain_timeout_s: float,
    dry_run: bool = False,
) -> Report:
    """Write the unit, reload systemd, enable it and (re)start it."""
    path = systemd_unit_path(env, home)
    unit = render_unit(
        python=python_executable(), config=config, home=home, drain_timeout_s=drain_timeout_s
    )
    report = Report(path, unit)
    report.commands = [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", UNIT],
        ["systemctl", "--user", "restart", UNIT],  # starts it, or replaces a running one
    ]
    if dry_run:
        return report
    write_atomic(path, unit)
    for command in report.commands:
        run_command_blocking(command)
    return report


def uninstall_systemd(*, home: Path, env: Mapping[str, str]) -> Report:
    """Stop and disable the unit, remove it, reload systemd."""
    path = systemd_unit_path(env, home)
    report = Report(path, "")
    if path.exists():
        stop = ["systemctl", "--user", "disable", "--now", UNIT]
        run_command_blocking(stop)
        report.commands.append(stop)
        path.unlink()
        report.notes.append(f"removed {path}")
    else:
        report.notes.append(f"{path} was not there")
    reload = ["systemctl", "--user", "daemon-reload"]
    run_command_blocking(reload)
    report.commands.append(reload)
    return report


def systemd_job() -> JobInfo:
    """The unit as systemd has it (loaded False when it is not)."""
    result = run_command_blocking(
        [
            "systemctl",
            "--user",
            "show",
            UNIT,
            "--property=LoadState,ActiveState,MainPID,ExecStart,WorkingDirectory,Environment",
        ]
    )
    return parse_systemctl_show(result.stdout)
