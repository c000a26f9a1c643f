"""The few exceptions selfheal raises, named for the condition."""

from __future__ import annotations


class SelfhealError(Exception):
    """Base of every error selfheal raises on purpose."""


class ConfigError(SelfhealError, ValueError):
    """The configuration is invalid; the message names the key and the rule."""

    def __init__(self, problems: list[str] | str, *, path: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        if len(self.problems) == 1:
            message = f"{where}invalid config: {self.problems[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{where}invalid config ({len(self.problems)} problems):\n{lines}"
        super().__init__(message)


class ControlError(SelfhealError):
    """A control-socket request failed; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class StartupError(SelfhealError, RuntimeError):
    """The daemon cannot run at all as configured; retrying would not help."""


class DaemonAlreadyRunning(StartupError):
    """Another live daemon already owns the control socket."""


class EmbeddedRedisError(SelfhealError, RuntimeError):
    """The embedded redis-server could not be started or reached."""


class RedisServerNotFound(StartupError):
    """No redis-server binary is available for the embedded Redis."""
