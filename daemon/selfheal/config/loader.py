"""Load the config file plus env into validated Settings, citing every problem by key."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, to_jsonable_python

from selfheal.config.checks import cross_check
from selfheal.config.leaves import (
    LEAVES,
    Leaf,
    leaf_value,
    redact_value,
    secret_values,
    show_value,
)
from selfheal.config.schema import Settings
from selfheal.config.sources import Candidate, gather_candidates
from selfheal.errors import ConfigError
from selfheal.redact import register_secrets

DEFAULT_CONFIG = "~/.joelclaw/system-bus.config.json"
# A complete config is a few KiB; anything near this is not a config file.
MAX_CONFIG_BYTES = 1 << 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class ConfigItem:
    """One effective key as `config show` lists it; `value` is already redacted if secret."""

    key: str
    value: Any
    source: str
    secret: bool
    env_vars: tuple[str, ...]
    default: Any


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings plus where each value came from."""

    settings: Settings
    path: Path
    exists: bool
    raw: dict[str, Any]
    sources: Mapping[str, str]
    digest: str

    def effective_items(self) -> list[ConfigItem]:
        """Every leaf key in schema order, secrets redacted."""
        return [
            ConfigItem(
                key=leaf.key,
                value=redact_value(leaf.secret, leaf_value(self.settings, leaf)),
                source=self.sources[leaf.key],
                secret=leaf.secret is not None,
                env_vars=leaf.env_vars,
                default=leaf.default,
            )
            for leaf in LEAVES
        ]

    def public_dict(self) -> dict[str, Any]:
        """Effective settings as nested camelCase JSON ({router, transport, selfheal}), redacted."""
        result: dict[str, Any] = {}
        for item in self.effective_items():
            *parents, last = item.key.split(".")
            node = result
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = item.value
        return result


def _home(env: Mapping[str, str]) -> str:
    return env.get("HOME") or os.environ.get("HOME") or str(Path.home())


def _expand(path: Path, env: Mapping[str, str]) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        text = _home(env) + text[1:]
    return Path(os.path.abspath(text))


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """$SELFHEAL_CONFIG if set, else ~/.joelclaw/system-bus.config.json (~ from env HOME)."""
    env = os.environ if env is None else env
    return _expand(Path(env.get("SELFHEAL_CONFIG") or DEFAULT_CONFIG), env)


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


_RULES = {
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "string_pattern_mismatch": "must match {pattern}",
    "string_too_short": "must not be empty",
    "string_too_long": "must have at most {max_length} character(s)",
    "literal_error": "must be one of {expected}",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "too_short": "must have at least {min_length} item(s)",
    "too_long": "must have at most {max_length} item(s)",
    "missing": "is required",
}


def _describe(error: ErrorDetails, leaf: Leaf, candidate: Candidate) -> str | None:
    """Turn one pydantic error on a candidate into 'key = value: rule'; None to skip it."""
    if error["type"] == "extra_forbidden":
        return None  # reported with a 'did you mean' hint while walking the file
    label = candidate.label
    for part in error["loc"]:
        label += f"[{part}]" if isinstance(part, int) else f".{part}"
    ctx = error.get("ctx", {})
    template = _RULES.get(error["type"])
    if template is not None:
        rule_text = template.format(**ctx)
    elif error["type"] == "value_error":
        rule_text = str(ctx.get("error", error["msg"]))
    else:
        rule_text = error["msg"]
    value = error.get("input")
    if error["type"] == "missing" or isinstance(value, dict | list):
        return f"{label}: {rule_text}"
    if candidate.source.startswith("env:") and isinstance(value, int | float | bool):
        value = str(value)  # show what was typed in the shell
    return f"{label} = {show_value(leaf.secret, value)}: {rule_text}"


def _validation_context(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    return {"home": _home(env), "base_dir": path.parent}


def _nest(effective: Mapping[Leaf, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for leaf, value in effective.items():
        node = nested
        for part in leaf.aliases[:-1]:
            node = node.setdefault(part, {})
        node[leaf.aliases[-1]] = value
    return nested


def _digest(settings: Settings) -> str:
    canonical = json.dumps(
        to_jsonable_python(settings, by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Load and validate file + env; raise ConfigError listing every problem found."""
    env = os.environ if env is None else env
    path = _expand(path, env) if path is not None else default_config_path(env)
    raw, exists = read_raw(path)
    problems: list[str] = []
    candidates = gather_candidates(raw, env, problems)
    context = _validation_context(path, env)
    validated: dict[str, Any] = {}
    origins: dict[str, Candidate] = {}
    for leaf in LEAVES:
        for rank, candidate in enumerate(candidates[leaf.key]):
            if rank > 0 and candidate.source == "default":
                break  # shadowed defaults are valid by construction
            # Shadowed file/env values are checked too: they win as soon as a stronger one goes.
            try:
                value = leaf.adapter.validate_python(candidate.value, context=context)
            except ValidationError as exc:
                for error in exc.errors():
                    message = _describe(error, leaf, candidate)
                    if message is not None:
                        problems.append(message)
                continue
            if rank == 0:
                validated[leaf.key] = value
        origins[leaf.key] = candidates[leaf.key][0]
    problems.extend(cross_check(validated, origins))
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)), path=str(path))
    effective = {leaf: origins[leaf.key].value for leaf in LEAVES}
    try:
        settings = Settings.model_validate(_nest(effective), context=context)
    except ValidationError as exc:  # pragma: no cover - leaves were validated one by one
        raise ConfigError([str(e["msg"]) for e in exc.errors()], path=str(path)) from None
    # Here rather than in each caller: every config this process reads (the daemon's at
    # start and on each reload, a CLI command's) has its secrets masked in all it writes.
    register_secrets(secret_values(settings))
    return LoadedConfig(
        settings=settings,
        path=path,
        exists=exists,
        raw=raw,
        sources=MappingProxyType({leaf.key: origins[leaf.key].source for leaf in LEAVES}),
        digest=_digest(settings),
    )
