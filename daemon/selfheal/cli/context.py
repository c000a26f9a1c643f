"""What every CLI command needs: the config path, the socket, a client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from selfheal.cli.output import fail
from selfheal.config.locate import default_config_path, expand_user, find_control_socket
from selfheal.control.client import ControlClient, DaemonNotRunning
from selfheal.errors import ConfigError, ControlError

if TYPE_CHECKING:
    from selfheal.config.loader import LoadedConfig

EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_DAEMON_ERROR = 4
EXIT_DEGRADED = 5


@dataclass
class CliState:
    """Global options, resolved lazily."""

    config_path: Path | None
    socket_path: Path | None
    env: dict[str, str]

    def resolved_config_path(self) -> Path:
        """--config, else $SELFHEAL_CONFIG, else the default path."""
        if self.config_path is not None:
            return expand_user(self.config_path, self.env)
        return default_config_path(self.env)

    def warn_if_missing(self) -> None:
        """Say so when --config names a file that is not there (defaults would apply)."""
        # os.path.exists: a path that cannot even be looked at (a name too long) is
        # missing too; reading it then says why.
        if self.config_path is not None and not os.path.exists(self.resolved_config_path()):
            click.echo(
                f"selfheal: warning: --config {self.config_path} does not exist; "
                "the defaults apply",
                err=True,
            )

    def load(self) -> LoadedConfig:
        """Load the config or exit 2 with the validation message."""
        from selfheal.config.loader import load_config

        self.warn_if_missing()
        try:
            return load_config(self.resolved_config_path(), self.env)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
            raise AssertionError("unreachable") from exc

    def control_socket(self) -> Path:
        """--socket, else where this config's daemon listens, read without validating the
        rest of the file: a config edit the daemon refused must not hide the daemon."""
        if self.socket_path is not None:
            return self.socket_path
        self.warn_if_missing()
        path, problem = find_control_socket(self.resolved_config_path(), self.env)
        if problem:
            click.echo(
                f"selfheal: warning: {problem}\nselfheal: warning: using control socket {path}",
                err=True,
            )
        return path

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """Call the running daemon; exit 3 if none runs, 4 if it answers an error."""
        client = ControlClient(self.control_socket(), timeout=timeout)
        try:
            return client.call(method, params or {})
        except DaemonNotRunning as exc:
            fail(str(exc), EXIT_NOT_RUNNING)
        except ControlError as exc:
            fail(f"daemon refused {method}: {exc}", EXIT_DAEMON_ERROR)
        except OSError as exc:  # a socket path too long for AF_UNIX, not ours to open...
            fail(f"cannot reach a daemon on {client.path}: {exc.strerror or exc}", EXIT_NOT_RUNNING)
        raise AssertionError("unreachable")

    def stream(self, method: str, params: dict[str, Any]) -> Iterator[Any]:
        """Stream events from the running daemon; same exit codes as `call`."""
        client = ControlClient(self.control_socket(), timeout=30)
        try:
            yield from client.stream(method, params, idle_timeout=120)
        except DaemonNotRunning as exc:
            fail(str(exc), EXIT_NOT_RUNNING)
        except ControlError as exc:
            fail(f"daemon refused {method}: {exc}", EXIT_DAEMON_ERROR)
        except OSError as exc:  # a socket path too long for AF_UNIX, not ours to open...
            fail(f"cannot reach a daemon on {client.path}: {exc.strerror or exc}", EXIT_NOT_RUNNING)
