"""The one precedence order: env > backup section > selfHealing section > default."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from selfheal.config.leaves import LEAVES, Leaf, list_item_model, model_of, show_value
from selfheal.config.schema import RouterSettings, Settings, TransportSettings

# Where each compat group is read from in the file, strongest first.
ROUTER_FILE_SECTIONS = (("backupFailureRouter",), ("selfHealing", "router"))
TRANSPORT_FILE_SECTIONS = (("backupTransport",), ("selfHealing", "transport"))
OUR_SECTION = "selfheal"
OWN_SECTIONS = ("selfHealing", "backupFailureRouter", "backupTransport", OUR_SECTION)

_INTEGER = re.compile(r"\d+")
_NUMBER = re.compile(r"\d+(\.\d+)?")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Candidate:
    """One value offered for a key; the first candidate of a key is the effective one."""

    value: Any
    source: str  # "env:VAR", "file:<dotted file key>" or "default"
    label: str  # what a problem message names: the env var, the file key, or "<key> (default)"


def aliases_of(model: type[BaseModel]) -> dict[str, str]:
    """Map each camelCase file key of a model to its attribute name."""
    return {info.alias or name: name for name, info in model.model_fields.items()}


def unknown_key(where: str, key: str, known: list[str]) -> str:
    """Describe an unknown key, with a 'did you mean' hint when one is close."""
    # Case-folded, so sdkURL still finds sdkUrl; snake_case finds camelCase via the same ratio.
    folded = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(folded), n=1, cutoff=0.7)
    hint = f"; did you mean '{folded[close[0]]}'?" if close else ""
    return f"{where}.{key}: unknown key{hint}"


def _section(data: Mapping[str, Any], path: tuple[str, ...], problems: list[str]) -> dict[str, Any]:
    """Return the object at `path` ({} when absent); a non-object is a problem."""
    node: Any = data
    for depth, part in enumerate(path):
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
        if not isinstance(node, dict):
            dotted = ".".join(path[: depth + 1])
            problems.append(f"{dotted}: must be an object, got {type_name(node)}")
            return {}
    return node if isinstance(node, dict) else {}


def type_name(value: Any) -> str:
    """JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def file_key_of(key: str) -> str:
    """Where a key is written in the file when it is set there: the router and transport
    keys in the original's strongest sections, ours as they are."""
    group, _, rest = key.partition(".")
    sections = {"router": ROUTER_FILE_SECTIONS[0], "transport": TRANSPORT_FILE_SECTIONS[0]}
    return ".".join((*sections[group], rest)) if group in sections else key


def _unprefixed(alias: str) -> str:
    # nasSshHost -> sshHost: selfHealing.transport accepts both spellings.
    rest = alias.removeprefix("nas")
    return rest[:1].lower() + rest[1:]


def _compat_file_values(raw: Mapping[str, Any], problems: list[str]) -> dict[str, list[Candidate]]:
    """Read the router and transport keys from the original's sections, strongest first."""
    found: dict[str, list[Candidate]] = {}
    healing = _section(raw, ("selfHealing",), problems)
    for key in healing:
        if key not in ("router", "transport"):
            problems.append(unknown_key("selfHealing", key, ["router", "transport"]))
    groups = (
        ("router", RouterSettings, ROUTER_FILE_SECTIONS),
        ("transport", TransportSettings, TRANSPORT_FILE_SECTIONS),
    )
    for group, model, sections in groups:
        aliases = list(aliases_of(model))
        for path in sections:
            where = ".".join(path)
            data = _section(raw, path, problems)
            both_forms = path == ("selfHealing", "transport")
            accepted = aliases + ([_unprefixed(a) for a in aliases] if both_forms else [])
            for key in data:
                if key not in accepted:
                    problems.append(unknown_key(where, key, accepted))
            for alias in aliases:
                spellings = [alias, _unprefixed(alias)] if both_forms else [alias]
                present = [s for s in dict.fromkeys(spellings) if s in data]
                if len(present) > 1:
                    problems.append(
                        f"{where}.{present[0]} and {where}.{present[1]}: the same key twice "
                        "(with and without the 'nas' prefix); keep one"
                    )
                    continue
                if present:
                    file_key = f"{where}.{present[0]}"
                    candidate = Candidate(data[present[0]], f"file:{file_key}", file_key)
                    found.setdefault(f"{group}.{alias}", []).append(candidate)
    return found


def _check_item_keys(value: Any, model: type[BaseModel], where: str, problems: list[str]) -> None:
    """Report unknown keys inside the objects of a list-of-objects key (e.g. watchdog.workers)."""
    if not isinstance(value, list):
        return
    known = list(aliases_of(model))
    for index, item in enumerate(value):
        if isinstance(item, dict):
            for key in item:
                if key not in known:
                    problems.append(unknown_key(f"{where}[{index}]", str(key), known))


def _own_file_values(
    data: Mapping[str, Any], model: type[BaseModel], where: str, problems: list[str]
) -> dict[str, list[Candidate]]:
    """Walk our own section along the schema, reporting unknown keys and non-objects."""
    found: dict[str, list[Candidate]] = {}
    fields = {
        alias: name
        for alias, name in aliases_of(model).items()
        if not (model is Settings and alias in ("router", "transport"))
    }
    for key in data:
        if key not in fields:
            problems.append(unknown_key(where, str(key), list(fields)))
    for alias, name in fields.items():
        if alias not in data:
            continue
        info = model.model_fields[name]
        file_key = f"{where}.{alias}"
        nested = model_of(info.annotation)
        if nested is not None:
            value = data[alias]
            if isinstance(value, dict):
                found.update(_own_file_values(value, nested, file_key, problems))
            else:
                problems.append(f"{file_key}: must be an object, got {type_name(value)}")
            continue
        item_model = list_item_model(info.annotation)
        if item_model is not None:
            _check_item_keys(data[alias], item_model, file_key, problems)
        found[file_key] = [Candidate(data[alias], f"file:{file_key}", file_key)]
    return found


def parse_env(leaf: Leaf, text: str) -> Any:
    """Parse an env string strictly into the leaf's scalar type; raise ValueError."""
    if leaf.kind is bool:
        if text.strip().lower() not in _BOOLS:
            raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
        return _BOOLS[text.strip().lower()]
    if leaf.kind is int:
        if not _INTEGER.fullmatch(text):
            raise ValueError("must be an integer (decimal digits only)")
        return int(text)
    if leaf.kind is float:
        if not _NUMBER.fullmatch(text):
            raise ValueError("must be a number (digits, optional decimal part)")
        return float(text)
    return text


def gather_candidates(
    raw: Mapping[str, Any], env: Mapping[str, str], problems: list[str]
) -> dict[str, list[Candidate]]:
    """Every leaf's candidates in precedence order (env vars as listed, file, default)."""
    file_values = _compat_file_values(raw, problems)
    ours = _section(raw, (OUR_SECTION,), problems)
    file_values.update(_own_file_values(ours, Settings, OUR_SECTION, problems))
    result: dict[str, list[Candidate]] = {}
    for leaf in LEAVES:
        candidates: list[Candidate] = []
        for var in leaf.env_vars:
            text = env.get(var)
            if not text:  # unset and "" are the same: shells make "unset" hard to spell
                continue
            try:
                label = f"{var} (for {leaf.key})"
                candidates.append(Candidate(parse_env(leaf, text), f"env:{var}", label))
            except ValueError as exc:
                problems.append(f"{var} (for {leaf.key}) = {show_value(leaf.secret, text)}: {exc}")
        candidates.extend(file_values.get(leaf.key, []))
        candidates.append(Candidate(leaf.default, "default", f"{leaf.key} (default)"))
        result[leaf.key] = candidates
    return result
