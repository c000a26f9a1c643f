"""What every CLI command needs: the config path, the socket, a client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from selfheal.cli.output import fail
from selfheal.config import LoadedConfig, default_config_path, load_config
from selfheal.config.loader import read_raw
from selfheal.control.client import ControlClient, DaemonNotRunning
from selfheal.errors import ConfigError, ControlError

EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_DAEMON_ERROR = 4
EXIT_DEGRADED = 5

DEFAULT_SOCKET = "~/.joelclaw/selfheal.sock"


@dataclass
class CliState:
    """Global options, resolved lazily."""

    config_path: Path | None
    socket_path: Path | None
    env: dict[str, str]

    def resolved_config_path(self) -> Path:
        """--config, else $SELFHEAL_CONFIG, else the default path."""
        return self.config_path or default_config_path(self.env)

    def load(self) -> LoadedConfig:
        """Load the config or exit 2 with the validation message."""
        try:
            return load_config(self.resolved_config_path(), self.env)
        except ConfigError as exc:
            fail(str(exc), EXIT_CONFIG)
            raise AssertionError("unreachable") from exc

    def control_socket(self) -> Path:
        """--socket, else the config's socket; a broken config still finds the daemon."""
        if self.socket_path is not None:
            return self.socket_path
        try:
            return load_config(self.resolved_config_path(), self.env).settings.control_socket
        except ConfigError as exc:
            fallback = (
                self.env.get("SELFHEAL_SOCKET")
                or _raw_socket(self.resolved_config_path())
                or DEFAULT_SOCKET
            )
            path = Path(fallback).expanduser()
            click.echo(
                f"selfheal: warning: {exc}\nselfheal: warning: using control socket {path}",
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


def _raw_socket(config_path: Path) -> str | None:
    """The controlSocket string of a file that fails validation, if it has one."""
    try:
        raw, _ = read_raw(config_path)
        value = raw["selfheal"]["controlSocket"]
    except (ConfigError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) and value.startswith(("/", "~")) else None
