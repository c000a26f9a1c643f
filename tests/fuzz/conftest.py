"""Fuzz tests print how many cases each tried (and how long it took) at the end of the run.

SELFHEAL_FUZZ_EXAMPLES=N multiplies every test's default example count by N.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, Daemons
from tests.support.fuzz import Cases, scale

_TRIED: list[tuple[str, int, float]] = []


@pytest.fixture
def cases(request: pytest.FixtureRequest) -> Iterator[Cases]:
    """The test's case counter; reported in the terminal summary."""
    counter = Cases()
    yield counter
    _TRIED.append((request.node.nodeid, counter.count, counter.elapsed))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TRIED:
        return
    terminalreporter.section(f"fuzz cases tried (scale x{scale()})")
    for nodeid, count, elapsed in _TRIED:
        terminalreporter.write_line(f"{nodeid}: {count} cases in {elapsed:.1f}s")
    total = sum(count for _, count, _ in _TRIED)
    terminalreporter.write_line(f"total: {total} cases")


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for a whole module: every batch of cases must leave it as it found it."""
    home = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    daemons = Daemons(home)
    try:
        yield daemons.start()
    finally:
        daemons.kill_all()
        shutil.rmtree(home, ignore_errors=True)
