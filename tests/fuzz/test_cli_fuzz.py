"""Random argv for `selfheal`, with no daemon and with a running one, and with config
files of any content: the exit code is always one of the documented ones (0-5) and the
output never holds a traceback. A few run as real processes, with argv bytes that are
not UTF-8."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import click
import pytest
from click.testing import CliRunner
from hypothesis import event, given
from hypothesis import strategies as st

from selfheal.cli import cli
from tests.fuzz.test_config_fuzz import raw_files
from tests.support.daemon import DaemonProcess
from tests.support.fuzz import Cases, fuzz_settings

DOCUMENTED: Final = frozenset(range(6))
# Never run by the fuzz: the daemon itself, commands that install or remove a service
# for the user, and `doctor` (a second per call, and it sends test notifications).
NEVER: Final = {("run",), ("doctor",)} | {
    (manager, verb) for manager in ("launchd", "systemd") for verb in ("install", "uninstall")
}
# With a daemon running, commands that would act (a backup, a drill, a deletion, a
# restart, a new config) are left out too.
ACTING: Final = {
    ("backup", "run"),
    ("backup", "drill"),
    ("backup", "retention"),
    ("watchdog", "restart"),
    ("incidents", "retry"),
    ("events", "send"),
    ("nas", "config", "init"),
}
# Options that would make a command run until stopped.
ENDLESS: Final = {"--watch", "--follow"}


def commands() -> dict[tuple[str, ...], click.Command]:
    """Every leaf command of the CLI by its path."""
    found: dict[tuple[str, ...], click.Command] = {}

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            context = click.Context(command)
            for name in command.list_commands(context):
                sub = command.get_command(context, name)
                assert sub is not None
                walk(sub, (*path, name))
        else:
            found[path] = command

    walk(cli, ())
    return found


COMMANDS: Final = commands()
ODD = st.text(max_size=12) | st.sampled_from(
    ["", " ", "-", "--", "--json=1", "-h", "\x00x", "\u202e", "é" * 40, "1e999", "-1", "0"]
)


def values(param: click.Parameter, paths: list[str]) -> st.SearchStrategy[str]:
    """Strings for one param: what its type takes, near misses and junk."""
    kind = param.type
    if isinstance(kind, click.Choice):
        fitting: st.SearchStrategy[str] = st.sampled_from([str(c) for c in kind.choices])
    elif isinstance(kind, click.IntRange | click.FloatRange):
        fitting = st.integers(-(10**20), 10**20).map(str) | st.sampled_from(["0.5", "nan", "inf"])
    elif isinstance(kind, click.Path):
        fitting = st.sampled_from(paths)
    else:
        fitting = st.sampled_from(["redis", "typesense", "system-bus-worker", "x:y", "test/a.b"])
        fitting |= st.sampled_from(['{"a": 1}', "[" * 600, '{"a": NaN}', "1-1"])
    return st.one_of(fitting, fitting, fitting, ODD)  # mostly what it takes


@st.composite
def argvs(draw: st.DrawFn, paths: list[str], leave_out: set[tuple[str, ...]]) -> list[str]:
    path = draw(st.sampled_from(sorted(set(COMMANDS) - NEVER - leave_out)))
    command = COMMANDS[path]
    tokens: list[str] = []
    for param in command.params:
        if not draw(st.booleans()):
            continue
        if isinstance(param, click.Argument):
            tokens.append(draw(values(param, paths)))
            continue
        name = draw(st.sampled_from([o for o in param.opts if o not in ENDLESS] or [""]))
        if not name:
            continue
        assert isinstance(param, click.Option)
        tokens.append(name)
        if not param.is_flag:
            tokens.append(draw(values(param, paths)))
    if draw(st.integers(0, 3)) == 0:
        tokens += draw(st.lists(ODD | st.sampled_from(["--nope", "-x", "--json"]), max_size=2))
    tokens = draw(st.permutations(tokens))
    globals_: list[str] = []
    if draw(st.integers(0, 3)) == 0:
        globals_ += ["--config", draw(st.sampled_from(paths))]
    if draw(st.integers(0, 7)) == 0:
        globals_ += ["--socket", draw(st.sampled_from(paths))]
    return [*globals_, *path, *tokens]


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFHEAL_", "OTEL_"))}
    return {**env, "HOME": str(home)}


def check(argv: list[str], result: Any) -> None:
    shown = f"argv={argv!r} exit={result.exit_code}\n{result.output[-2000:]}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        shown,
        result.exc_info,
    )
    assert result.exit_code in DOCUMENTED, shown
    assert "Traceback" not in result.output, shown
    event(f"exit {result.exit_code}")


@pytest.fixture
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sh-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def odd_paths(home: Path) -> list[str]:
    """Paths a user might pass: missing, a folder, a FIFO, junk, our own files (all in
    `home`: `nas config init` and `nas mark` write where they are told)."""
    (home / "folder").mkdir(exist_ok=True)
    fifo = home / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (home / "junk.json").write_bytes(b"\xff{not json")
    return [
        str(home / "missing.json"),
        str(home / "folder"),
        str(fifo),
        str(home / "junk.json"),
        str(home / "config.json"),
        "~/config.json",
        str(home / ("n" * 300)),  # a name longer than a file system takes
        "x" * 5000,
        "",
    ]


@given(data=st.data(), raw=raw_files())
@fuzz_settings(1000)
def test_without_a_daemon_every_argv_exits_with_a_documented_code(
    home: Path, cases: Cases, data: st.DataObject, raw: bytes
) -> None:
    cases.tried()
    (home / "config.json").write_bytes(raw)
    paths = odd_paths(home)
    argv = data.draw(argvs(paths, set()), label="argv")
    env = clean_env(home) | {"SELFHEAL_CONFIG": str(home / "config.json")}
    with contextlib.chdir(home):  # "" and "." name a folder of ours
        result = CliRunner().invoke(cli, argv, env=env)
    check(argv, result)


@pytest.mark.slow
@given(data=st.data())
@fuzz_settings(800)
def test_with_a_daemon_every_argv_exits_with_a_documented_code(
    daemon: DaemonProcess, home: Path, cases: Cases, data: st.DataObject
) -> None:
    cases.tried()
    paths = [*odd_paths(home), str(daemon.config_path)]
    argv = data.draw(argvs(paths, ACTING), label="argv")
    with contextlib.chdir(home):  # "" and "." name a folder of ours
        result = CliRunner().invoke(cli, argv, env=daemon.env())
    check(argv, result)
    assert daemon.call("ping")["pong"] is True


@pytest.mark.slow
@given(
    argv=st.lists(
        st.binary(min_size=1, max_size=6).filter(lambda b: b"\x00" not in b)
        | st.sampled_from([b"status", b"--config", b"nas", b"config", b"show", b"\xff\xfe"]),
        min_size=1,
        max_size=4,
    )
)
@fuzz_settings(8)
def test_argv_bytes_that_are_not_utf8_exit_with_a_documented_code(
    home: Path, cases: Cases, argv: list[bytes]
) -> None:
    """As a real process: the terminal takes what the CLI prints back of its argv."""
    cases.tried()
    env = {k.encode(): v.encode() for k, v in clean_env(home).items()}
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"selfheal", *argv],
        env={**env, b"LC_ALL": b"C.UTF-8", b"PYTHONIOENCODING": b"utf-8"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        cwd=home,
    )
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode in DOCUMENTED, (argv, done.returncode, output)
    assert "Traceback" not in output, (argv, output)
