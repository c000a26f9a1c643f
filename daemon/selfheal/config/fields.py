"""Field markers and validated value types shared by the config schema."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from selfheal.config.locate import check_socket_path, config_relative_path
from selfheal.core.schedule import parse_schedule
from selfheal.core.ssh_flags import parse_ssh_flags


@dataclass(frozen=True)
class Env:
    """Environment variables overriding a key; the first one set wins."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class Secret:
    """Marks a key whose value must never be shown; `kind` says how much to hide."""

    kind: Literal["value", "url_password", "mapping_values"] = "value"


def rule(message: str) -> PydanticCustomError:
    """Build a validation error whose text is used verbatim in problem messages."""
    return PydanticCustomError("config_rule", message)


def _context(info: ValidationInfo) -> tuple[str, Path]:
    """Return (home, base_dir) from the validation context, falling back to the process."""
    ctx: dict[str, Any] = info.context if isinstance(info.context, dict) else {}
    home = ctx.get("home") or os.environ.get("HOME") or str(Path.home())
    base_dir = ctx.get("base_dir") or Path.cwd()
    return str(home), Path(base_dir)


def resolve_path(value: object, info: ValidationInfo) -> object:
    """Expand `~/` with HOME and resolve `./` and `../` against the config file's folder."""
    try:
        return config_relative_path(value, *_context(info))
    except ValueError as exc:
        raise rule(str(exc)) from None


def _fits_unix_socket(path: Path) -> Path:
    try:
        return check_socket_path(path)
    except ValueError as exc:
        raise rule(str(exc)) from None


def _posix_absolute(value: str) -> str:
    if not value.startswith("/") or "\x00" in value:
        raise rule("must be an absolute POSIX path (starting with '/')")
    if ".." in value.split("/"):
        raise rule("must not contain '..' segments")
    return value


def _schedule(value: str) -> str:
    # One parser for config validation and the scheduler: what validates, runs.
    try:
        parse_schedule(value)
    except ValueError as exc:
        raise rule(str(exc)) from None
    return value


_USER = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)"
_SSH_HOST = re.compile(rf"(?:{_USER}@)?{_HOST}")


def _ssh_host(value: str) -> str:
    # A leading '-' or any shell metacharacter here would be read as an ssh option or command.
    if not _SSH_HOST.fullmatch(value):
        raise rule("must be [user@]host with no spaces, options or shell metacharacters")
    return value


def _ssh_flags(value: str) -> str:
    try:
        parse_ssh_flags(value)
    except ValueError as exc:
        raise rule(str(exc)) from None
    return value


def _http_url(value: str) -> str:
    if any(char.isspace() or not char.isprintable() for char in value):
        raise rule("must be a URL without spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise rule("must be an http:// or https:// URL with a host")
    _check_port(value)
    return value


def _check_port(url: str) -> None:
    try:
        port = urlsplit(url).port
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise rule("has an invalid port (must be 1..65535)")


def check_redis_url(value: str, *, allow_embedded: bool, allow_many: bool) -> str:
    """Validate a redis://, rediss:// or unix:// URL (several hosts only for Sentinel/Cluster)."""
    if allow_embedded and value == "embedded":
        return value
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("redis", "rediss", "unix"):
        expected = "'embedded' or " if allow_embedded else ""
        raise rule(f"must be {expected}a redis://, rediss:// or unix:// URL")
    if scheme == "unix":
        if not urlsplit(value).path.startswith("/"):
            raise rule("unix:// URL must carry an absolute socket path (unix:///path/redis.sock)")
        return value
    netloc, _, path = rest.split("?", 1)[0].partition("/")
    if path and not path.isdigit():
        raise rule("database after the host must be a number (redis://host:6379/0)")
    hosts = netloc.rpartition("@")[2].split(",")
    if len(hosts) > 1 and not allow_many:
        raise rule("must name a single host")
    for host in hosts:
        if not urlsplit(f"redis://{host}").hostname:
            raise rule(f"has an empty host in {host!r}")
        _check_port(f"redis://{host}")
    return value


def _redis_backup_source(value: str) -> str:
    if value == "bus":
        return value
    return check_redis_url(value, allow_embedded=False, allow_many=False)


def _redis_bus_url(value: str) -> str:
    return check_redis_url(value, allow_embedded=True, allow_many=True)


ConfigPath = Annotated[Path, BeforeValidator(resolve_path)]
SocketPath = Annotated[Path, BeforeValidator(resolve_path), AfterValidator(_fits_unix_socket)]
PosixAbsolute = Annotated[str, AfterValidator(_posix_absolute)]
Schedule = Annotated[str, AfterValidator(_schedule)]
SshHost = Annotated[str, AfterValidator(_ssh_host)]
SshFlags = Annotated[str, AfterValidator(_ssh_flags)]
HttpUrlText = Annotated[str, AfterValidator(_http_url)]
RedisBusUrl = Annotated[str, AfterValidator(_redis_bus_url)]
RedisSourceUrl = Annotated[str, AfterValidator(_redis_backup_source)]
