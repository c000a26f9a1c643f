"""`selfheal status --watch` in a real terminal (a tmux pane) against a running daemon:
it redraws one screen in place at each refresh, shows the daemon's sections, and
Ctrl-C ends it quietly with status 0."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfheal.backup.transports.mount import mark_nas
from tests.support.daemon import DaemonProcess, Daemons
from tests.support.nas import ssh_nowhere
from tests.support.servers import wait_until
from tests.support.terminal import Terminal

pytestmark = pytest.mark.slow

CLEAR, HOME = "\x1b[2J", "\x1b[1;1H"  # what click.clear() writes on a terminal
REFRESHES = 5
INTERVAL = "0.3"
FOOTER = f"(refreshing every {INTERVAL}s; Ctrl-C to stop)"
PROBLEMS = ("Traceback", "Error", "KeyboardInterrupt", "DISCONNECTED", "DEGRADED")


def start_daemon(home: Path, daemons: Daemons) -> DaemonProcess:
    nas = home / "nas"
    nas.mkdir()
    mark_nas(nas, "test-nas")
    config = {
        "backupTransport": ssh_nowhere(home),
        "selfheal": {
            "backups": {
                "redis": {"source": "bus", "mountRoot": str(nas), "requireMountPoint": False},
                "typesense": {"enabled": False},
            }
        },
    }
    return daemons.start(config=config)


@pytest.fixture
def watched(short_home: Path, daemon_factory: Daemons) -> Iterator[tuple[Terminal, int]]:
    """`status --watch` running in a 120x40 tmux pane; the daemon's pid."""
    daemon = start_daemon(short_home, daemon_factory)
    assert daemon.process is not None
    command = [sys.executable, "-m", "selfheal", "status", "--watch", "--interval", INTERVAL]
    terminal = Terminal(short_home / "tty", command, daemon.env())
    try:
        yield terminal.start(), daemon.process.pid
    finally:
        terminal.kill()


def screens(raw: str) -> list[str]:
    """The text each redraw wrote, one per clear of the screen."""
    return raw.split(CLEAR)[1:]


def test_status_watch_redraws_one_screen_in_place_in_a_real_terminal(
    watched: tuple[Terminal, int],
) -> None:
    terminal, pid = watched
    heading = re.compile(rf"^selfheal \S+  pid {pid}  state running  up \S+$", re.MULTILINE)

    def refreshed() -> bool:
        return len(screens(terminal.raw())) > REFRESHES

    wait_until(refreshed, 60, f"{REFRESHES} refreshes of status --watch in the terminal")

    def drawn() -> str | None:
        shown = terminal.screen()  # one draw may be caught half-way: wait for a whole one
        return shown if shown.endswith(FOOTER) else None

    wait_until(drawn, 10, "a whole screen in the pane")
    shown = drawn()
    assert shown is not None
    lines = shown.splitlines()
    # In place: the screen starts at the top with the heading, once; not N screens stacked.
    assert heading.match(lines[0]), shown
    assert len(heading.findall(shown)) == 1 and shown.count(FOOTER) == 1, shown
    for section in (
        "config      ",
        "redis       embedded ",
        "backup      redis: no run yet; next in ",
        "telemetry   ",
        "services    ",
        "incidents   0 open",
        "queue       0 pending, 0 dead letters, ",
    ):
        assert sum(line.startswith(section) for line in lines) == 1, (section, shown)
    running = re.search(r"^services    (\d+)/(\d+) running$", shown, re.MULTILINE)
    assert running is not None and running[1] == running[2] and int(running[1]) > 0, shown
    assert " connected" in shown
    assert not [p for p in PROBLEMS if p in shown], shown

    terminal.send_keys("C-c")  # Ctrl-C ends the watch without a traceback
    assert terminal.wait_exit(20) == 0, terminal.history()
    raw = terminal.raw()
    drawn_screens = screens(raw)
    assert len(drawn_screens) > REFRESHES
    # Every redraw but the last (Ctrl-C may cut it short) is one whole screen, drawn
    # from the top left corner of a cleared terminal.
    for screen in drawn_screens[:-1]:
        assert screen.startswith(HOME), screen
        text = screen.removeprefix(HOME).replace("\r\n", "\n")
        assert heading.match(text) and len(heading.findall(text)) == 1, screen
        assert text.count(FOOTER) == 1, screen
    assert not [p for p in PROBLEMS if p in raw], raw[-3000:]
    assert not [p for p in PROBLEMS if p in terminal.history()], terminal.history()
