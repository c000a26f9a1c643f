"""Ordinary self-healing requests decoded straight from their JSON text, in one C call.

The router's batch path reads hundreds of requests per batch. Validating each one
with the pydantic contract (core/contracts.py) costs several times what msgspec
takes to decode and check the same text into the structs below. The contract stays
the authority: `decode_request` answers only for requests it is sure the contract
would accept, with the very values the contract would give, and returns None for
anything else (then the caller asks `parse_request`, which decides and words any
error). tests/unit/test_fast_request.py holds the two to that, over generated and
hostile requests.

How "sure" is kept narrow:
- every field carries the contract's own limits; patterns end in \\Z, because
  Python's `$` also matches before a final newline and the contract's (Rust) `$` does not;
- unknown keys refuse, in every object, so snake_case field names (which the contract
  also accepts), evidence or playbook extras (which it keeps) and typos all fall back;
- text must be valid Unicode: msgspec refuses a lone surrogate escape, as the contract does;
- `deadlineAt` is checked by the contract's own datetime validator, not re-implemented;
- the few rules limits cannot say (not blank, sleepMaxMs >= sleepMinMs) run in
  __post_init__, and a failure there is a refusal like any other;
- the event data limits the contract applies (core.events: nesting, size) are met by
  construction for text with few containers and of modest length, and measured as the
  contract measures them otherwise.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal, cast

import msgspec
from msgspec import Meta, Struct
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from selfheal.core.contracts import (
    ATTEMPT_LIMIT,
    DOMAIN_PATTERN,
    ERRNO_BELOW,
    ERRNO_NAME_LIMIT,
    EVIDENCE_LIMIT,
    FREE_TEXT_LIMIT,
    INCIDENT_ID_PATTERN,
    MAX_RETRIES_LIMIT,
    NAME_TEXT_LIMIT,
    SLEEP_LIMIT_MS,
    SLEEP_STEP_LIMIT_MS,
    SUMMARY_LIMIT,
    TEXT_LIMIT,
    derive_incident_id,
)
from selfheal.core.events import (
    DATA_DEPTH_LIMIT,
    EVENT_DATA_LIMIT,
    EVENT_NAME_MAX_LENGTH,
    EVENT_NAME_MIN_LENGTH,
    EVENT_NAME_PATTERN,
    compact_json,
    few_containers,
    too_large,
)


def _anchored(pattern: str) -> str:
    """The contract's `^...$` pattern for Python's re, where only \\Z means "the end"."""
    if not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"expected an anchored pattern, got {pattern!r}")
    return pattern[:-1] + r"\Z"


# str.strip and re's \s agree on what whitespace is (checked over every code point).
_NOT_BLANK: Final = re.compile(r"\S")
_DEADLINE: Final = TypeAdapter(AwareDatetime)


def _require_not_blank(text: str) -> None:
    if _NOT_BLANK.search(text) is None:
        raise ValueError("blank")


def _deadline(text: str) -> datetime:
    try:
        return _DEADLINE.validate_python(text)
    except ValidationError:
        raise ValueError("deadlineAt") from None


Text = Annotated[str, Meta(min_length=1, max_length=TEXT_LIMIT)]
Summary = Annotated[str, Meta(min_length=1, max_length=SUMMARY_LIMIT)]
FreeText = Annotated[str, Meta(max_length=FREE_TEXT_LIMIT)]
NameText = Annotated[str, Meta(max_length=NAME_TEXT_LIMIT)]
Errno = (
    Annotated[int, Meta(ge=0, lt=ERRNO_BELOW)]
    | Annotated[str, Meta(min_length=1, max_length=ERRNO_NAME_LIMIT)]
)
EventName = Annotated[
    str,
    Meta(
        min_length=EVENT_NAME_MIN_LENGTH,
        max_length=EVENT_NAME_MAX_LENGTH,
        pattern=_anchored(EVENT_NAME_PATTERN),
    ),
]


class _Fast(Struct, frozen=True, forbid_unknown_fields=True, rename="camel"):
    """Base: frozen, every key known, camelCase on the wire."""


class FastRetryPolicy(_Fast, frozen=True):
    """RetryPolicy's fields and limits."""

    max_retries: Annotated[int, Meta(ge=0, le=MAX_RETRIES_LIMIT)]
    sleep_min_ms: Annotated[int, Meta(ge=1, le=SLEEP_LIMIT_MS)]
    sleep_max_ms: Annotated[int, Meta(ge=1, le=SLEEP_LIMIT_MS)]
    sleep_step_ms: Annotated[int, Meta(ge=0, le=SLEEP_STEP_LIMIT_MS)]

    def __post_init__(self) -> None:
        if self.sleep_max_ms < self.sleep_min_ms:
            raise ValueError("sleepMaxMs below sleepMinMs")


class FastEvidence(_Fast, frozen=True):
    """Evidence's fields and limits (without extras: an extra key refuses)."""

    kind: NameText | None = None
    message: FreeText | None = None
    errno: Errno | None = None
    exception: NameText | None = None
    path: NameText | None = None
    key: NameText | None = None
    event_id: NameText | None = None
    snippet: FreeText | None = None


class FastPlaybook(_Fast, frozen=True):
    """Playbook's fields and limits (without extras)."""

    skills: list[NameText] = []
    actions: list[NameText] = []
    links: list[NameText] = []
    runbook: NameText | None = None


class FastRouteTo(_Fast, frozen=True):
    """RouteTo's fields and limits."""

    event: EventName
    data: dict[str, Any] = {}


class FastRequest(_Fast, frozen=True):
    """SelfHealingRequest's fields and limits; reads like it (core.contracts.RequestView)."""

    source_function: Text
    target_component: Text
    problem_summary: Summary
    attempt: Annotated[int, Meta(ge=0, le=ATTEMPT_LIMIT)]
    retry_policy: FastRetryPolicy
    # A bare string is evidence with only a message: __post_init__ turns each into one,
    # so `evidence` reads as a list of FastEvidence.
    evidence_items: Annotated[list[FastEvidence | FreeText], Meta(max_length=EVIDENCE_LIMIT)] = (
        msgspec.field(name="evidence")
    )
    playbook: FastPlaybook
    context: dict[str, Any] | None = None
    owner: Text | None = None
    # Kept as text, checked by the contract's own validator (`deadline_at` reads it).
    deadline_text: str | None = msgspec.field(default=None, name="deadlineAt")
    fallback_action: Literal["escalate", "manual"] | None = None
    incident_id: Annotated[str, Meta(pattern=_anchored(INCIDENT_ID_PATTERN))] | None = None
    domain: Annotated[str, Meta(pattern=_anchored(DOMAIN_PATTERN))] = "backup"
    route_to: FastRouteTo | None = None

    def __post_init__(self) -> None:
        for text in (self.source_function, self.target_component, self.problem_summary):
            if not "!" <= text[:1] <= "~":  # text starting with visible ASCII is not blank
                _require_not_blank(text)
        if self.owner is not None:
            _require_not_blank(self.owner)
        items = self.evidence_items
        if str in map(type, items):
            normalised = [
                FastEvidence(message=item) if isinstance(item, str) else item for item in items
            ]
            msgspec.structs.force_setattr(self, "evidence_items", normalised)
        if self.deadline_text is not None:
            _deadline(self.deadline_text)

    @property
    def evidence(self) -> list[FastEvidence]:
        """The evidence items (bare strings already made items)."""
        return cast(list[FastEvidence], self.evidence_items)

    @property
    def deadline_at(self) -> datetime | None:
        """deadlineAt as the contract reads it."""
        return None if self.deadline_text is None else _deadline(self.deadline_text)

    @property
    def resolved_incident_id(self) -> str:
        """The given incidentId, else the one derived from domain, target and source."""
        if self.incident_id is not None:
            return self.incident_id
        return derive_incident_id(self.domain, self.target_component, self.source_function)

    def to_data(self) -> dict[str, Any]:
        """What SelfHealingRequest.to_data gives for the same request."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        deadline = self.deadline_at
        if deadline is not None:
            data["deadlineAt"] = _DEADLINE.dump_python(deadline, mode="json")
        return data


_DECODER: Final = msgspec.json.Decoder(FastRequest)
# Text up to this long is sure to be within EVENT_DATA_LIMIT as the contract measures
# it (the JSON of to_data): a character of text becomes at most 12 of that JSON (an
# astral character, written as two \uXXXX escapes; a number such as 1e15 grows less),
# and to_data adds its defaults and nulls, a few kilobytes with EVIDENCE_LIMIT items
# (tests/unit/test_fast_request.py checks the margin). Longer text is measured.
_SURELY_SMALL: Final = EVENT_DATA_LIMIT // 16


def decode_request(text: str) -> FastRequest | None:
    """The request in `text` when it is an ordinary valid one, else None (not sure).

    `text` is an event's data as it came off the wire: JSON of an object.
    """
    if not few_containers(text, DATA_DEPTH_LIMIT):
        # So no valid answer here nests deeper than the contract allows; deeper text
        # is left to the contract, which refuses it by name.
        return None
    try:
        request = _DECODER.decode(text)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, UnicodeEncodeError):
        return None  # UnicodeEncodeError: a lone surrogate in `text` itself
    if len(text) > _SURELY_SMALL and too_large(len(compact_json(request.to_data()))):
        return None
    return request
