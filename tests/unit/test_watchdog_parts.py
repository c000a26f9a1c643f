"""The watchdog's parts on real files and real commands: the log tail across
truncation and rotation, and what is read from launchctl and systemctl."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from selfheal.config.schema_healing import SDK_UNREACHABLE, WorkerSettings
from selfheal.watchdog.logtail import LINE_LIMIT, READ_LIMIT, LogTail
from selfheal.watchdog.managers import (
    Command,
    JobInfo,
    Launchd,
    ManagerError,
    Systemd,
    manager_for,
    parse_launchctl_print,
)
from selfheal.watchdog.plane import _binding_drift

LINE = f"2026-12-03 worker: {SDK_UNREACHABLE} http://127.0.0.1:3111/api/inngest\n"


def tail_of(log: Path) -> LogTail:
    tail = LogTail([log], [SDK_UNREACHABLE, "ECONNREFUSED"])
    tail.start()
    return tail


def test_old_lines_are_not_news_new_ones_are(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text(LINE * 3)
    tail = tail_of(log)
    assert tail.poll() == []
    with open(log, "a") as out:
        out.write("fine\n" + LINE + "connect ECONNREFUSED 127.0.0.1:3111\n")
    assert tail.poll() == [LINE.rstrip("\n"), "connect ECONNREFUSED 127.0.0.1:3111"]
    assert tail.poll() == []


def test_a_line_written_in_two_parts_is_matched_once_whole(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("")
    tail = tail_of(log)
    with open(log, "a") as out:
        out.write(LINE[:20])
        out.flush()
        assert tail.poll() == []
        out.write(LINE[20:])
    assert tail.poll() == [LINE.rstrip("\n")]


def test_truncation_in_place_is_read_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("x" * 5000 + "\n")
    tail = tail_of(log)
    with open(log, "w") as out:  # truncated (copytruncate), then a short new line
        out.write(LINE)
    assert tail.poll() == [LINE.rstrip("\n")]


def test_rotation_by_rename_follows_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("old\n")
    tail = tail_of(log)
    os.rename(log, tmp_path / "w.log.1")
    assert tail.poll() == []  # between the rename and the new file
    log.write_text("started again\n" + LINE)
    assert tail.poll() == [LINE.rstrip("\n")]
    assert tail.poll() == []


def test_a_missing_file_is_read_whole_once_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    tail = tail_of(log)
    assert tail.poll() == []
    log.write_text(LINE)
    assert tail.poll() == [LINE.rstrip("\n")]


def test_a_flood_is_bounded_and_counted(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("")
    tail = tail_of(log)
    with open(log, "a") as out:
        out.write("noise\n" * (READ_LIMIT // 3) + "z" * (LINE_LIMIT * 3) + SDK_UNREACHABLE + "\n")
    [match] = tail.poll()
    assert len(match) == LINE_LIMIT and tail.skipped_bytes > 0


def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "w.log"
    os.mkfifo(fifo)
    assert tail_of(fifo).poll() == []  # no block, no match


LAUNCHCTL_PRINT = """gui/501/com.joel.system-bus-worker = {
\tactive count = 1
\tpath = /Users/joel/Library/LaunchAgents/com.joel.system-bus-worker.plist
\ttype = LaunchAgent
\tstate = running

\tprogram = /opt/homebrew/bin/bun
\targuments = {
\t\t/opt/homebrew/bin/bun
\t\trun
\t\tsrc/serve.ts
\t}

\tworking directory = /Users/joel/Code/joelclaw/packages/system-bus

\tenvironment = {
\t\tprogram = not-this-one
\t}
\tpid = 4242
}
"""


def test_launchctl_print_is_read_at_the_top_level_only() -> None:
    job = parse_launchctl_print(LAUNCHCTL_PRINT)
    assert job == JobInfo(
        loaded=True,
        pid=4242,
        program="/opt/homebrew/bin/bun",
        working_directory="/Users/joel/Code/joelclaw/packages/system-bus",
        state="running",
    )
    stopped = parse_launchctl_print(LAUNCHCTL_PRINT.replace("\tpid = 4242\n", ""))
    assert stopped.pid is None


def test_binding_drift_names_each_difference() -> None:
    worker = WorkerSettings.model_validate(
        {
            "name": "w",
            "expectedProgram": "/opt/homebrew/bin/bun",
            "expectedWorkingDirectory": "/Users/joel/Code/joelclaw/packages/system-bus",
        }
    )
    job = parse_launchctl_print(LAUNCHCTL_PRINT)
    assert _binding_drift(worker, job) == ""
    stale = JobInfo(True, 1, "/opt/homebrew/bin/bun", "/Users/joel/old/system-bus")
    assert "working directory is '/Users/joel/old/system-bus'" in _binding_drift(worker, stale)
    unchecked = WorkerSettings.model_validate({"name": "w"})
    assert _binding_drift(unchecked, stale) == ""


def test_managers_follow_the_config() -> None:
    launchd = manager_for(WorkerSettings.model_validate({"name": "w", "launchdLabel": "a.b"}))
    assert isinstance(launchd, Launchd) and launchd.plist.name == "a.b.plist"
    unit = manager_for(
        WorkerSettings.model_validate(
            {"name": "w", "serviceManager": "systemd", "launchdLabel": "a.b"}
        )
    )
    assert isinstance(unit, Systemd) and unit.unit == "a.b.service"
    command = manager_for(
        WorkerSettings.model_validate(
            {"name": "w", "serviceManager": "command", "restartCommand": ["/bin/true"]}
        )
    )
    assert isinstance(command, Command)


@pytest.mark.anyio
async def test_a_command_restart_runs_the_argument_list_without_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "restarted; echo injected"
    done = await Command(["/usr/bin/touch", str(marker)]).restart(JobInfo(loaded=True))
    assert marker.exists() and done.startswith("/usr/bin/touch")
    with pytest.raises(ManagerError, match="exited 1"):
        await Command(["/bin/false"]).restart(JobInfo(loaded=True))
    with pytest.raises(ManagerError, match="cannot run"):
        await Command([str(tmp_path / "missing")]).restart(JobInfo(loaded=True))
