"""Load the config file plus env into validated Settings, citing every problem by key."""

from __future__ import annotations

import hashlib
import json
import os
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
from selfheal.config.locate import (
    default_config_path,
    expand_user,
    home_of,
    read_raw,
)
from selfheal.config.schema import Settings
from selfheal.config.sources import OWN_SECTIONS, Candidate, file_key_of, gather_candidates
from selfheal.core.text import unwritable_text
from selfheal.errors import ConfigError
from selfheal.redact import register_secrets


@dataclass(frozen=True)
class ConfigItem:
    """One effective key as `config show` lists it; `value` is already redacted if secret."""

    key: str
    value: Any
    source: str
    secret: bool
    env_vars: tuple[str, ...]
    default: Any
    written_as: str  # the file key or env var that set it; for a default, where to set it
    overridden: tuple[tuple[str, Any], ...] = ()  # (source, redacted value) it shadows

    @property
    def origin(self) -> str:
        """file, env or default."""
        return self.source.split(":", 1)[0]


@dataclass(frozen=True)
class LoadedConfig:
    """Validated settings plus where each value came from."""

    settings: Settings
    path: Path
    exists: bool
    raw: dict[str, Any]
    sources: Mapping[str, str]
    digest: str
    # Per key, the file or env values that a stronger source shadows (strongest first).
    shadowed: Mapping[str, tuple[Candidate, ...]]

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
                written_as=_written_as(self.sources[leaf.key], leaf),
                overridden=tuple(
                    (c.source, redact_value(leaf.secret, c.value))
                    for c in self.shadowed.get(leaf.key, ())
                ),
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


def _written_as(source: str, leaf: Leaf) -> str:
    """The file key or env var behind a source; for a default, the file key to edit."""
    kind, _, where = source.partition(":")
    return where if kind in ("file", "env") else file_key_of(leaf.key)


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
    return {"home": home_of(env), "base_dir": path.parent}


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
    path = expand_user(path, env) if path is not None else default_config_path(env)
    raw, exists = read_raw(path)
    # JSON can spell half a surrogate pair; no log, terminal or server takes it. (Other
    # programs' sections are theirs.)
    where = unwritable_text({section: raw[section] for section in OWN_SECTIONS if section in raw})
    if where is not None:
        raise ConfigError(
            f"{where}: not Unicode text (a lone surrogate escape \\ud800-\\udfff)", path=str(path)
        )
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
        shadowed=MappingProxyType(
            {
                leaf.key: shadowed
                for leaf in LEAVES
                if (shadowed := tuple(c for c in candidates[leaf.key][1:] if c.source != "default"))
            }
        ),
    )
