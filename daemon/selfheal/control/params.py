"""A control method's params, read by name with a checked type and range.

Every handler reads its params through `Params`, so a wrong one is answered the same
way everywhere: an `invalid_params` error naming the param, the rule and (shortened)
what was sent, never an `internal` error or a silent default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any, Final, TypeVar

from selfheal.control.protocol import INVALID_PARAMS
from selfheal.errors import ControlError

# Rows a listing method returns at most (incidents, dead letters).
MAX_ROWS: Final = 1000
# How much of a refused value an error message repeats.
_SHOWN_LIMIT: Final = 60

Choice = TypeVar("Choice", bound=str)


def _shown(value: Any) -> str:
    """A refused value as the client sent it (JSON), shortened for the message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOWN_LIMIT else text[: _SHOWN_LIMIT - 3] + "..."


class Params:
    """The params of one request."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self._raw = raw

    def _refuse(self, name: str, rule: str) -> ControlError:
        if name in self._raw:
            return ControlError(INVALID_PARAMS, f"{name} {rule} (got {_shown(self._raw[name])})")
        return ControlError(INVALID_PARAMS, f"{name} is required: it {rule}")

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int:
        """A whole number within [low, high] (JSON 5, not 5.0, "5" or true)."""
        value = self._raw.get(name, default)
        if type(value) is not int or not low <= value <= high:
            raise self._refuse(name, f"must be an integer between {low} and {high}")
        return value

    def text(
        self,
        name: str,
        *,
        max_length: int,
        pattern: str | None = None,
        meaning: str = "a string",
    ) -> str:
        """A non-blank string of at most `max_length` characters, matching `pattern`
        (anchored) when given; `meaning` says what it is in the error."""
        value = self._raw.get(name)
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > max_length
            or (pattern is not None and re.fullmatch(pattern, value) is None)
        ):
            raise self._refuse(name, f"must be {meaning} of at most {max_length} characters")
        return value

    def optional_text(self, name: str, *, max_length: int, min_length: int = 0) -> str | None:
        """A string of `min_length` to `max_length` characters, or None when absent or null."""
        value = self._raw.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not min_length <= len(value) <= max_length:
            rule = f"must be a string of {min_length} to {max_length} characters"
            raise self._refuse(name, rule)
        return value

    def choice(self, name: str, choices: Collection[Choice]) -> Choice:
        """One of `choices`."""
        value = self._raw.get(name)
        for choice in choices:
            if value == choice:
                return choice
        raise self._refuse(name, f"must be one of {', '.join(choices)}")

    def optional_choice(self, name: str, choices: Collection[Choice]) -> Choice | None:
        """One of `choices`, or None when absent or null."""
        return None if self._raw.get(name) is None else self.choice(name, choices)

    def flag(self, name: str, *, default: bool) -> bool:
        """true or false (not "false", 0 or null)."""
        value = self._raw.get(name, default)
        if not isinstance(value, bool):
            raise self._refuse(name, "must be true or false")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        """A JSON object; {} when absent."""
        value = self._raw.get(name, {})
        if not isinstance(value, dict):
            raise self._refuse(name, "must be a JSON object")
        return value
