"""Running an external command (launchctl, systemctl, a configured restart command,
plutil): an argument list, never a shell string; bounded in time; a failure is an
error naming the command and what it said (redacted)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import partial
from typing import Final

import anyio

from selfheal.errors import SelfhealError
from selfheal.redact import redact_text

COMMAND_TIMEOUT_S: Final = 30.0
# What an error quotes of a command's output.
OUTPUT_LIMIT: Final = 400


class CommandError(SelfhealError):
    """A command could not run, did not answer in time, or failed."""


@dataclass(frozen=True)
class CommandResult:
    """How a command ended, its output as text."""

    returncode: int
    stdout: str
    stderr: str


async def run_command(argv: list[str], *, check: bool = True) -> CommandResult:
    """Run `argv`; with `check`, a non-zero exit raises CommandError."""
    try:
        with anyio.fail_after(COMMAND_TIMEOUT_S):
            done = await anyio.run_process(argv, check=False, stdin=subprocess.DEVNULL)
    except TimeoutError:
        command = " ".join(argv[:3])
        raise CommandError(f"{command}: no answer in {COMMAND_TIMEOUT_S:g} s") from None
    except FileNotFoundError as exc:
        if "/" not in argv[0]:
            raise CommandError(f"{argv[0]} is not on PATH") from None
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    result = CommandResult(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
    if check and result.returncode != 0:
        said = (result.stderr or result.stdout).strip()
        raise CommandError(
            f"{' '.join(argv)} exited {result.returncode}: {redact_text(said[:OUTPUT_LIMIT])}"
        )
    return result


def run_command_blocking(argv: list[str], *, check: bool = True) -> CommandResult:
    """run_command for callers outside an event loop (the CLI, a worker thread)."""
    return anyio.run(partial(run_command, argv, check=check))
