"""Find and read the config file, and the control socket it names, without the schema.

This is the part of the config a CLI call needs before it talks to the daemon: the
file's path, its bytes (read with bounds), and where the daemon listens. It imports
nothing beyond the standard library, so `selfheal status` starts fast; the loader
(`selfheal.config.loader`) builds on the same readers and rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from selfheal.errors import ConfigError

DEFAULT_CONFIG = "~/.joelclaw/system-bus.config.json"
# A complete config is a few KiB; anything near this is not a config file.
MAX_CONFIG_BYTES = 1 << 20
# The control socket: this env var, else the file's selfheal.controlSocket, else this.
SOCKET_ENV = "SELFHEAL_SOCKET"
SOCKET_KEY = ("selfheal", "controlSocket")
DEFAULT_SOCKET = "~/.joelclaw/selfheal.sock"
SOCKET_RECORDS = "~/.joelclaw/selfheal/sockets"
# macOS limits sun_path to 104 bytes including the NUL; keep a little margin.
MAX_SOCKET_PATH_BYTES = 100
PATH_FORMS = "an absolute path, a path starting with '~/', or './' / '../' (config file's folder)"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def home_of(env: Mapping[str, str]) -> str:
    """HOME from `env`, else the process's."""
    return env.get("HOME") or os.environ.get("HOME") or str(Path.home())


def expand_user(path: Path, env: Mapping[str, str]) -> Path:
    """`~` and `~/…` expanded with env HOME, made absolute."""
    text = str(path)
    if text == "~" or text.startswith("~/"):
        text = home_of(env) + text[1:]
    return Path(os.path.abspath(text))


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """$SELFHEAL_CONFIG if set, else ~/.joelclaw/system-bus.config.json (~ from env HOME)."""
    env = os.environ if env is None else env
    return expand_user(Path(env.get("SELFHEAL_CONFIG") or DEFAULT_CONFIG), env)


class _BadJsonError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # JSON parsers silently keep the last one; an edit would then seem ignored.
            raise _BadJsonError(f"duplicate key {key!r} in one object")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise _BadJsonError(f"{name} is not valid JSON")


def _check_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise ConfigError(f"the config path is {kind}, not a regular file", path=str(path))
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file is {st.st_size} bytes; a config file may be at most "
            f"{MAX_CONFIG_BYTES} bytes",
            path=str(path),
        )


def read_config_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist.

    Whatever sits at the path is checked before it is read: only a regular file of
    at most MAX_CONFIG_BYTES is read (a symlink to /dev/zero would otherwise be read
    until memory runs out), and it is opened non-blocking (a FIFO would otherwise
    block open() until a writer appears). The checks are repeated on the open
    descriptor, since the path can be swapped between stat and open.
    """
    try:
        _check_file(path, os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None
    try:
        _check_file(path, os.fstat(fd))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:  # it grew after fstat
        raise ConfigError(
            f"the file is larger than {MAX_CONFIG_BYTES} bytes, the limit for a config file",
            path=str(path),
        )
    return b"".join(chunks)


def read_raw(path: Path) -> tuple[dict[str, Any], bool]:
    """Parse the file into its top-level object; ({}, False) when it does not exist."""
    data_bytes = read_config_bytes(path)
    if data_bytes is None:
        return {}, False
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", path=str(path)) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise ConfigError(message, path=str(path)) from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"invalid JSON: {exc}", path=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a JSON object", path=str(path))
    return data, True


def config_relative_path(value: object, home: str, base_dir: Path) -> Path:
    """A path as config keys write it: absolute, `~/…` (HOME), or `./…`/`../…` (the
    config file's folder). A bare relative path is refused: it would depend on the
    daemon's working directory (`/` under launchd). Raises ValueError naming the forms."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string path ({PATH_FORMS})")
    if not value or "\x00" in value:
        raise ValueError(f"must be a non-empty path ({PATH_FORMS})")
    if value.startswith("/"):
        return Path(os.path.normpath(value))
    if value.startswith("~/"):
        return Path(os.path.normpath(os.path.join(home, value[2:])))
    if value.startswith(("./", "../")):
        return Path(os.path.normpath(base_dir / value))
    raise ValueError(f"must be {PATH_FORMS}")


def check_socket_path(path: Path) -> Path:
    """Refuse a path too long for a Unix socket (ValueError)."""
    size = len(os.fsencode(str(path)))
    if size > MAX_SOCKET_PATH_BYTES:
        raise ValueError(
            f"expands to {size} bytes; a Unix socket path must be <= {MAX_SOCKET_PATH_BYTES}"
        )
    return path


def find_control_socket(config_path: Path, env: Mapping[str, str]) -> tuple[Path, str | None]:
    """Where the daemon of this config listens, and a warning when the answer is a guess.

    The same precedence and path rules as the loader gives `controlSocket`, read
    leniently: a file that fails validation elsewhere, or cannot be read at all, still
    leads to the running daemon (which keeps its last good config and reports why the
    file was refused). A socket value that is itself unusable falls back to the default,
    with a warning naming the problem.
    """
    home = home_of(env)
    warning: str | None = None
    for name, value in _socket_candidates(config_path, env):
        if isinstance(value, ConfigError):
            recorded = _recorded_socket(config_path, env)
            if recorded is not None:
                return recorded, f"{value}; using the socket its daemon recorded"
            warning = str(value)
            continue
        try:
            return check_socket_path(config_relative_path(value, home, config_path.parent)), warning
        except ValueError as exc:
            warning = f"{name} = {value!r}: {exc}"
    return config_relative_path(DEFAULT_SOCKET, home, config_path.parent), warning


def socket_record(config_path: Path, env: Mapping[str, str]) -> Path:
    """Where the daemon of `config_path` records its control socket, for a CLI that
    cannot read the file (a half-finished edit): one small file per config path, in the
    default state folder (it cannot live in the configured one: that needs the file)."""
    digest = hashlib.sha256(os.fsencode(str(config_path))).hexdigest()[:16]
    return expand_user(Path(SOCKET_RECORDS), env) / digest


def _recorded_socket(config_path: Path, env: Mapping[str, str]) -> Path | None:
    try:
        text = socket_record(config_path, env).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return Path(text) if text.startswith("/") else None


def _socket_candidates(config_path: Path, env: Mapping[str, str]) -> Iterator[tuple[str, object]]:
    """The env var, then the file's key (or why the file could not be read); the file is
    only read when the env var did not answer."""
    if env.get(SOCKET_ENV):
        yield SOCKET_ENV, env[SOCKET_ENV]
    try:
        raw, _ = read_raw(config_path)
    except ConfigError as exc:
        yield "config", exc
        return
    section = raw.get(SOCKET_KEY[0])
    if isinstance(section, dict) and SOCKET_KEY[1] in section:
        yield ".".join(SOCKET_KEY), section[SOCKET_KEY[1]]
