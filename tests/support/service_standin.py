"""Stand-ins for `launchctl` and `systemctl --user` that really start and stop a worker.

Only the service manager is played: the worker is a real process (worker_app.py),
started, killed (by its recorded pid) and started again. The job's state lives in
the JSON file named by SELFHEAL_TEST_SERVICE_STATE:
  {"label", "loaded", "pid", "program", "working_directory", "argv", "log", "calls"}
Every invocation is appended to "calls". `install(folder, ...)` writes the two
commands into folder/bin, to put first on the daemon's PATH.

launchctl: print gui/<uid>/<label> | kickstart -k gui/<uid>/<label> |
           bootstrap gui/<uid> <plist> | bootout gui/<uid>/<label>
systemctl: --user show <unit> --property=... | --user restart <unit>
"""

from __future__ import annotations

import fcntl
import json
import os
import plistlib
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# A command-line stand-in: what it prints is what launchctl/systemctl would.
# ruff: noqa: T201

STATE_ENV = "SELFHEAL_TEST_SERVICE_STATE"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _stop(pid: int | None) -> None:
    if not _alive(pid):
        return
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.02)


def _start(state: dict[str, Any]) -> None:
    Path(state["log"]).parent.mkdir(parents=True, exist_ok=True)
    with open(state["log"], "ab") as log:
        process = subprocess.Popen(
            state["argv"],
            cwd=state["working_directory"],
            env={**os.environ, **state.get("env", {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state["pid"] = process.pid


def launchctl(state: dict[str, Any], args: list[str]) -> int:
    target = f"gui/{os.getuid()}/{state['label']}"
    if args[:1] == ["print"] and len(args) == 2:
        if not state["loaded"] or args[1] != target:
            print(f'Could not find service "{args[1]}" in domain', file=sys.stderr)
            return 113
        running = _alive(state["pid"])
        lines = [
            f"{target} = {{",
            "\tactive count = 1",
            f"\tstate = {'running' if running else 'not running'}",
            f"\tprogram = {state['program']}",
            f"\tworking directory = {state['working_directory']}",
        ]
        if running:
            lines.append(f"\tpid = {state['pid']}")
        env = [f"\t\t{name} => {value}" for name, value in state.get("env", {}).items()]
        lines += ["\tenvironment = {", *env, "\t\tprogram = not-the-top-level-one", "\t}", "}"]
        print("\n".join(lines))
        return 0
    if args[:2] == ["kickstart", "-k"] and len(args) == 3:
        if not state["loaded"] or args[2] != target:
            print("Could not find service", file=sys.stderr)
            return 113
        _stop(state["pid"])
        _start(state)
        return 0
    if args[:1] == ["bootstrap"] and len(args) == 3:
        if state["loaded"]:
            print("Bootstrap failed: 5: Input/output error", file=sys.stderr)
            return 5
        try:  # a real plist (selfheal's own): the job is what it says
            with open(args[2], "rb") as plist_file:
                plist = plistlib.load(plist_file)
        except (OSError, plistlib.InvalidFileException, ValueError):
            plist = None
        if plist is not None:
            state.update(
                label=plist["Label"],
                argv=plist["ProgramArguments"],
                program=plist["ProgramArguments"][0],
                env=plist.get("EnvironmentVariables", {}),
                working_directory=plist.get("WorkingDirectory", "/"),
                log=plist.get("StandardErrorPath", state["log"]),
            )
        state["loaded"] = True
        _start(state)
        return 0
    if args[:1] == ["bootout"] and len(args) == 2:
        if not state["loaded"] or args[1] != target:
            print("Boot-out failed: 3: No such process", file=sys.stderr)
            return 3
        _stop(state["pid"])
        state["loaded"] = False
        return 0
    print(f"launchctl stand-in: unsupported {args}", file=sys.stderr)
    return 64


def _read_unit(path: Path, state: dict[str, Any]) -> None:
    """ExecStart, WorkingDirectory and Environment= of a unit file, into the state."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "WorkingDirectory":  # a path setting: the value as written, no quoting
            state["working_directory"] = value.replace("%%", "%")
            continue
        words = [w.replace("%%", "%") for w in shlex.split(value)] if value else []
        if key == "ExecStart":
            state["argv"], state["program"] = words, words[0]
        elif key == "Environment":
            for word in words:
                name, _, text = word.partition("=")
                env[name] = text
    state["env"] = env


def _unit_file(unit: str) -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ["HOME"], ".config")
    return Path(base) / "systemd" / "user" / unit


def systemctl(state: dict[str, Any], args: list[str]) -> int:
    unit = state["label"] + ".service"
    if args == ["--user", "daemon-reload"]:
        path = _unit_file(unit)
        state["loaded"] = path.exists()
        if path.exists():
            _read_unit(path, state)
        return 0
    if args[:2] == ["--user", "enable"] and len(args) == 3:
        state["enabled"] = True
        return 0 if state["loaded"] and args[2] == unit else 5
    if args[:4] == ["--user", "disable", "--now", unit]:
        _stop(state["pid"])
        state["enabled"] = False
        return 0
    if args[:2] == ["--user", "show"] and len(args) >= 3:
        if args[2] != unit or not state["loaded"]:
            print("LoadState=not-found\nActiveState=inactive\nMainPID=0")
            return 0
        running = _alive(state["pid"])
        argv = " ".join(state["argv"])
        print(
            f"LoadState=loaded\nActiveState={'active' if running else 'failed'}\n"
            f"MainPID={state['pid'] if running else 0}\n"
            f"ExecStart={{ path={state['program']} ; argv[]={argv} ; ignore_errors=no }}\n"
            f"WorkingDirectory={state['working_directory']}\n"
            "Environment="
            + " ".join(shlex.quote(f"{k}={v}") for k, v in state.get("env", {}).items())
        )
        return 0
    if args[:2] == ["--user", "restart"] and len(args) == 3:
        if args[2] != unit or not state["loaded"]:
            print(f"Failed to restart {args[2]}: Unit not found.", file=sys.stderr)
            return 5
        _stop(state["pid"])
        _start(state)
        return 0
    print(f"systemctl stand-in: unsupported {args}", file=sys.stderr)
    return 64


def main() -> int:
    command, args = sys.argv[1], sys.argv[2:]
    path = Path(os.environ[STATE_ENV])
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = json.loads(path.read_text())
        state.setdefault("calls", []).append([command, *args])
        code = launchctl(state, args) if command == "launchctl" else systemctl(state, args)
        path.write_text(json.dumps(state))
    return code


def install(folder: Path) -> Path:
    """Write `launchctl` and `systemctl` into folder/bin; returns that bin folder."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("launchctl", "systemctl"):
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.argv[1:1] = [{name!r}]\n"
            f"sys.path.append({str(Path(__file__).parent)!r})\n"
            "import service_standin\nsys.exit(service_standin.main())\n"
        )
        path.chmod(0o755)
    return bin_dir


if __name__ == "__main__":
    sys.exit(main())
