"""Parse the original's `nasSshFlags` string into a typed, allowlisted set of SSH options."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from typing import Any

_NUMBER = re.compile(r"\d+(\.\d+)?")
_INTEGER = re.compile(r"\d+")
_YES_NO = {"yes": True, "no": False}


@dataclass(frozen=True)
class SshOptions:
    """The SSH options selfheal honours; None means "not given, use the client default"."""

    batch_mode: bool | None = None
    connect_timeout: float | None = None
    server_alive_interval: float | None = None
    server_alive_count_max: int | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = field(default=())
    user_known_hosts_files: tuple[str, ...] = field(default=())


def _number(name: str, text: str, *, minimum: float, maximum: float) -> float:
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name}={text!r}: must be a number of seconds")
    value = float(text)
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}={text!r}: must be between {minimum:g} and {maximum:g}")
    return value


def _integer(name: str, text: str, *, minimum: int, maximum: int) -> int:
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{name}={text!r}: must be a whole number")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ValueError(f"{name}={text!r}: must be between {minimum} and {maximum}")
    return value


def _path(name: str, text: str) -> str:
    if not text or "\x00" in text:
        raise ValueError(f"{name}={text!r}: must be a non-empty path")
    return text


def _set_once(options: SshOptions, attr: str, value: object, flag: str) -> SshOptions:
    # ssh silently keeps the first of duplicated options; we refuse instead of guessing.
    if getattr(options, attr) is not None:
        raise ValueError(f"{flag}: given more than once")
    changes: dict[str, Any] = {attr: value}
    return replace(options, **changes)


def _apply_option(options: SshOptions, token: str) -> SshOptions:
    """Apply one `Key=Value` option (the text after `-o`)."""
    key, sep, value = token.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError(f"-o {token!r}: expected Key=Value")
    name = key.lower()
    if name == "batchmode":
        if value.lower() not in _YES_NO:
            raise ValueError(f"BatchMode={value!r}: must be yes or no")
        return _set_once(options, "batch_mode", _YES_NO[value.lower()], "BatchMode")
    if name == "connecttimeout":
        number = _number(key, value, minimum=0.001, maximum=3600)
        return _set_once(options, "connect_timeout", number, "ConnectTimeout")
    if name == "serveraliveinterval":
        number = _number(key, value, minimum=0, maximum=3600)
        return _set_once(options, "server_alive_interval", number, "ServerAliveInterval")
    if name == "serveralivecountmax":
        count = _integer(key, value, minimum=1, maximum=1000)
        return _set_once(options, "server_alive_count_max", count, "ServerAliveCountMax")
    if name == "port":
        port = _integer(key, value, minimum=1, maximum=65535)
        return _set_once(options, "port", port, "Port")
    if name == "identityfile":
        return replace(options, identity_files=(*options.identity_files, _path(key, value)))
    if name == "userknownhostsfile":
        files = (*options.user_known_hosts_files, _path(key, value))
        return replace(options, user_known_hosts_files=files)
    # Anything else (StrictHostKeyChecking above all) could weaken host-key checks or
    # change behaviour we do not model, so it is refused rather than passed through.
    raise ValueError(
        f"-o {key}: option not allowed (allowed: BatchMode, ConnectTimeout, "
        "ServerAliveInterval, ServerAliveCountMax, Port, IdentityFile, UserKnownHostsFile)"
    )


def parse_ssh_flags(flags: str) -> SshOptions:
    """Parse `-o Key=Value`, `-oKey=Value`, `-p PORT` and `-i FILE` flags; raise ValueError."""
    try:
        tokens = shlex.split(flags)
    except ValueError as exc:
        raise ValueError(f"cannot split {flags!r}: {exc}") from None
    options = SshOptions()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        flag, attached = token[:2], token[2:]
        if flag not in ("-o", "-p", "-i"):
            raise ValueError(f"{token!r}: unsupported flag (only -o Key=Value, -p PORT, -i FILE)")
        if attached:
            argument = attached
        elif index + 1 < len(tokens):
            index += 1
            argument = tokens[index]
        else:
            raise ValueError(f"{flag}: missing its argument")
        if flag == "-o":
            options = _apply_option(options, argument)
        elif flag == "-p":
            port = _integer("-p", argument, minimum=1, maximum=65535)
            options = _set_once(options, "port", port, "Port")
        else:
            options = replace(
                options, identity_files=(*options.identity_files, _path("-i", argument))
            )
        index += 1
    return options
