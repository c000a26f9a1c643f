"""The service managers a worker runs under: how to ask about its job and restart it.

launchd (`launchctl print gui/<uid>/<label>`, `kickstart -k`, `bootstrap` when not
loaded), systemd user units (`systemctl --user show`, `restart`), or a configured
argument list. Every command is an argument list (never a shell string), bounded
in time, and its failure is an error naming the command and what it said.
Nothing here kills processes by name.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from selfheal.commands import CommandError, run_command
from selfheal.config.schema_healing import WorkerSettings

# A service-manager command that failed (the shared command runner's error).
ManagerError = CommandError


@dataclass(frozen=True)
class JobInfo:
    """What the service manager says about the worker's job."""

    loaded: bool
    pid: int | None = None
    program: str | None = None
    working_directory: str | None = None
    state: str | None = None
    config: str | None = None  # the job's SELFHEAL_CONFIG, when it sets one

    def public(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "loaded": self.loaded,
            "pid": self.pid,
            "program": self.program,
            "working_directory": self.working_directory,
            "state": self.state,
            "config": self.config,
        }


class ServiceManager(Protocol):
    """The port the guarded restart acts through."""

    @property
    def kind(self) -> str:
        """launchd, systemd or command."""
        ...

    async def describe(self) -> JobInfo:
        """The job as the manager has it loaded now."""
        ...

    async def restart(self, job: JobInfo) -> str:
        """Restart (or start) the job; returns what was done, for the record."""
        ...


_LAUNCHD_FIELD = re.compile(r"^\t(program|working directory|pid|state) = (.*)$", re.MULTILINE)
# An environment entry of the job (inside its `environment = {...}` block).
_LAUNCHD_CONFIG = re.compile(r"^\t\tSELFHEAL_CONFIG => (.*)$", re.MULTILINE)


def parse_launchctl_print(text: str) -> JobInfo:
    """The job's top-level program, working directory, pid and state from
    `launchctl print` (nested blocks are indented deeper and not read)."""
    found: dict[str, str] = {}
    for match in _LAUNCHD_FIELD.finditer(text):
        found.setdefault(match.group(1), match.group(2).strip())
    pid = found.get("pid", "")
    config = _LAUNCHD_CONFIG.search(text)
    return JobInfo(
        loaded=True,
        pid=int(pid) if pid.isdecimal() else None,
        program=found.get("program"),
        working_directory=found.get("working directory"),
        state=found.get("state"),
        config=config.group(1).strip() if config else None,
    )


class Launchd:
    """A launchd agent in the user's GUI domain."""

    kind = "launchd"

    def __init__(self, label: str, plist: Path, uid: int | None = None) -> None:
        self.label = label
        self.plist = plist
        self.domain = f"gui/{os.getuid() if uid is None else uid}"

    async def describe(self) -> JobInfo:
        """`launchctl print`: not loaded when it fails."""
        result = await run_command(
            ["launchctl", "print", f"{self.domain}/{self.label}"], check=False
        )
        if result.returncode != 0:
            return JobInfo(loaded=False)
        return parse_launchctl_print(result.stdout)

    async def restart(self, job: JobInfo) -> str:
        """`kickstart -k` a loaded job; `bootstrap` its plist when it is not loaded."""
        if not job.loaded:
            if not self.plist.is_file():
                raise ManagerError(f"{self.label} is not loaded and {self.plist} does not exist")
            await run_command(["launchctl", "bootstrap", self.domain, str(self.plist)])
            return f"bootstrap {self.domain} {self.plist}"
        await run_command(["launchctl", "kickstart", "-k", f"{self.domain}/{self.label}"])
        return f"kickstart -k {self.domain}/{self.label}"


_EXEC_PATH = re.compile(r"\bpath=([^ ;]+)")


def parse_systemctl_show(text: str) -> JobInfo:
    """The unit's state, main pid, program and working directory from `systemctl show`."""
    fields = dict(line.partition("=")[::2] for line in text.splitlines())
    if fields.get("LoadState") != "loaded":
        return JobInfo(loaded=False, state=fields.get("LoadState"))
    program = _EXEC_PATH.search(fields.get("ExecStart", ""))
    pid = fields.get("MainPID", "0")
    try:
        environment = dict(
            word.partition("=")[::2] for word in shlex.split(fields.get("Environment", ""))
        )
    except ValueError:  # unbalanced quotes: not ours to read
        environment = {}
    return JobInfo(
        loaded=True,
        pid=int(pid) if pid.isdecimal() and pid != "0" else None,
        program=program.group(1) if program else None,
        working_directory=fields.get("WorkingDirectory") or None,
        state=fields.get("ActiveState"),
        config=environment.get("SELFHEAL_CONFIG"),
    )


class Systemd:
    """A systemd user unit."""

    kind = "systemd"

    def __init__(self, unit: str) -> None:
        # A label such as com.example.worker names the unit com.example.worker.service.
        self.unit = unit if unit.endswith(".service") else f"{unit}.service"

    async def describe(self) -> JobInfo:
        """`systemctl --user show`: not loaded when the unit is not found."""
        result = await run_command(
            [
                "systemctl",
                "--user",
                "show",
                self.unit,
                "--property=LoadState,ActiveState,MainPID,ExecStart,WorkingDirectory,Environment",
            ]
        )
        return parse_systemctl_show(result.stdout)

    async def restart(self, job: JobInfo) -> str:
        """`systemctl --user restart` (which also starts a stopped unit)."""
        if not job.loaded:
            raise ManagerError(f"systemd user unit {self.unit} is not loaded")
        await run_command(["systemctl", "--user", "restart", self.unit])
        return f"systemctl --user restart {self.unit}"


class Command:
    """A configured argument list that restarts the worker."""

    kind = "command"

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv

    async def describe(self) -> JobInfo:
        """Nothing to ask: the command's program is all that is known."""
        return JobInfo(loaded=True, program=self.argv[0])

    async def restart(self, job: JobInfo) -> str:
        """Run the command."""
        await run_command(self.argv)
        return " ".join(self.argv)


def manager_for(worker: WorkerSettings) -> ServiceManager:
    """The worker's service manager, as configured."""
    if worker.service_manager == "systemd":
        return Systemd(worker.launchd_label)
    if worker.service_manager == "command":
        assert worker.restart_command is not None  # the config requires it
        return Command(list(worker.restart_command))
    plist = worker.launchd_plist or (
        Path.home() / "Library" / "LaunchAgents" / f"{worker.launchd_label}.plist"
    )
    return Launchd(worker.launchd_label, plist)
