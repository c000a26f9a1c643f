"""The self-healing request contract (seed ADR-0138) and the completion payload."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from selfheal.core.events import (
    EVENT_NAME_MAX_LENGTH,
    EVENT_NAME_MIN_LENGTH,
    EVENT_NAME_PATTERN,
    compact_json,
    plain_message,
    too_deep,
    too_deep_message,
    too_large,
)
from selfheal.core.limits import SLEEP_LIMIT_MS

INCIDENT_ID_MAX_LENGTH: Final = 128
INCIDENT_ID_PATTERN: Final = rf"^[A-Za-z0-9_.:-]{{1,{INCIDENT_ID_MAX_LENGTH}}}$"
DOMAIN_PATTERN: Final = r"^[a-z][a-z0-9_-]{0,31}$"
# Lengths (in characters) and numbers the contract allows.
TEXT_LIMIT: Final = 256
SUMMARY_LIMIT: Final = 2000
FREE_TEXT_LIMIT: Final = 65_536
NAME_TEXT_LIMIT: Final = 4096
ERRNO_NAME_LIMIT: Final = 64
ERRNO_BELOW: Final = 100_000
ATTEMPT_LIMIT: Final = 1_000_000_000
MAX_RETRIES_LIMIT: Final = 100
SLEEP_STEP_LIMIT_MS: Final = 86_400_000
# Evidence items in one request: producers attach a few; the router reads each one.
EVIDENCE_LIMIT: Final = 50
# (How deep a request may nest, and how large it may be, are the event data limits of
# core.events: a request is the data of its event.)
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, Field(min_length=1, max_length=TEXT_LIMIT), AfterValidator(_not_blank)]
FreeText = Annotated[str, Field(max_length=FREE_TEXT_LIMIT)]
NameText = Annotated[str, Field(max_length=NAME_TEXT_LIMIT)]


class _Contract(BaseModel):
    """Base of the wire models: frozen, camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )

    def to_data(self) -> dict[str, Any]:
        """JSON-safe dict with the wire (camelCase) keys."""
        return self.model_dump(mode="json", by_alias=True)


class RetryPolicy(_Contract):
    """The requester's retry budget and backoff bounds, in milliseconds."""

    max_retries: int = Field(strict=True, ge=0, le=MAX_RETRIES_LIMIT)
    sleep_min_ms: int = Field(strict=True, ge=1, le=SLEEP_LIMIT_MS)
    sleep_max_ms: int = Field(strict=True, ge=1, le=SLEEP_LIMIT_MS)
    sleep_step_ms: int = Field(strict=True, ge=0, le=SLEEP_STEP_LIMIT_MS)

    @field_validator("sleep_max_ms")
    @classmethod
    def _max_not_below_min(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not a model one) so the error names sleepMaxMs itself.
        low = info.data.get("sleep_min_ms")
        if low is not None and value < low:
            raise ValueError(f"must be >= sleepMinMs ({low})")
        return value


class Evidence(_Contract):
    """One piece of free-form evidence; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    kind: NameText | None = None
    message: FreeText | None = None
    errno: int | str | None = None
    exception: NameText | None = None
    path: NameText | None = None
    key: NameText | None = None
    event_id: NameText | None = None
    snippet: FreeText | None = None

    @field_validator("errno", mode="before")
    @classmethod
    def _errno_shape(cls, value: Any) -> Any:
        # One check up front keeps union-member noise out of the error location.
        if value is None or (isinstance(value, str) and 0 < len(value) <= ERRNO_NAME_LIMIT):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < ERRNO_BELOW:
            return value
        raise ValueError("must be an errno number or name such as 'ENOSPC'")


class Playbook(_Contract):
    """What a human or the advisor may use: skills, actions, links, a runbook."""

    model_config = ConfigDict(extra="allow")

    skills: list[NameText] = Field(default_factory=list)
    actions: list[NameText] = Field(default_factory=list)
    links: list[NameText] = Field(default_factory=list)
    runbook: NameText | None = None


class RouteTo(_Contract):
    """The event a retry should emit, plus extra data for it (allowlisted by the router)."""

    event: str = Field(
        min_length=EVENT_NAME_MIN_LENGTH,
        max_length=EVENT_NAME_MAX_LENGTH,
        pattern=EVENT_NAME_PATTERN,
    )
    data: dict[str, Any] = Field(default_factory=dict)


class SelfHealingRequest(_Contract):
    """Data of `system/self.healing.requested`."""

    source_function: Text
    target_component: Text
    problem_summary: Annotated[
        str, Field(min_length=1, max_length=SUMMARY_LIMIT), AfterValidator(_not_blank)
    ]
    attempt: int = Field(strict=True, ge=0, le=ATTEMPT_LIMIT)
    retry_policy: RetryPolicy
    evidence: list[Evidence] = Field(max_length=EVIDENCE_LIMIT)
    playbook: Playbook
    context: dict[str, Any] | None = None
    owner: Text | None = None
    deadline_at: AwareDatetime | None = None
    fallback_action: Literal["escalate", "manual"] | None = None
    incident_id: str | None = Field(None, pattern=INCIDENT_ID_PATTERN)
    domain: str = Field("backup", pattern=DOMAIN_PATTERN)
    route_to: RouteTo | None = None

    @field_validator("evidence", mode="before")
    @classmethod
    def _bare_strings_are_messages(cls, value: Any) -> Any:
        # Producers often attach a log line as-is; it is evidence with only a message.
        if isinstance(value, list):
            return [{"message": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("deadline_at", mode="before")
    @classmethod
    def _deadline_is_iso_text(cls, value: Any) -> Any:
        # Bare numbers are refused: seconds versus milliseconds would be a guess.
        if value is None or isinstance(value, str | datetime):
            return value
        raise ValueError("must be an ISO 8601 timestamp with a timezone, e.g. 2026-02-25T12:00Z")

    @property
    def resolved_incident_id(self) -> str:
        """The given incidentId, else the one derived from domain, target and source."""
        if self.incident_id is not None:
            return self.incident_id
        return derive_incident_id(self.domain, self.target_component, self.source_function)


def _slug(text: str, limit: int) -> str:
    return _SLUG_UNSAFE.sub("-", text).strip("-")[:limit] or "x"


def derive_incident_id(domain: str, target_component: str, source_function: str) -> str:
    """A stable, readable incident id: `domain:target:source:hash` (at most 128 chars)."""
    # The hash keeps ids distinct when slugging or truncation makes two inputs look alike.
    digest = hashlib.sha256(
        "\x00".join((domain, target_component, source_function)).encode("utf-8", "surrogatepass")
    ).hexdigest()[:12]
    return ":".join(
        (_slug(domain, 32), _slug(target_component, 40), _slug(source_function, 40), digest)
    )


class InvalidRequest(ValueError):
    """A self-healing request breaks the contract; `field` is the first bad field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.field = problems[0][0] if problems else "request"
        self.problems = [f"{where}: {message}" for where, message in problems]
        super().__init__("invalid self-healing request: " + "; ".join(self.problems))


def _dotted(loc: tuple[int | str, ...]) -> str:
    """('evidence', 0, 'errno') -> 'evidence[0].errno'; the root is 'request'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "request"


def parse_request(text: str) -> SelfHealingRequest:
    """Validate a request straight from its JSON text (an event's data as it came);
    raise InvalidRequest naming every bad field."""
    # Measured first, and as given: the router stores the text and re-sends it as it
    # came (a pause's re-check), so every event it derives from a valid request can be
    # published. (An operator's retry re-sends it as the contract writes it; that event
    # is measured when it is built.)
    problem = too_large(len(text))
    if problem is not None:
        raise InvalidRequest([("request", problem)])
    try:
        request = SelfHealingRequest.model_validate_json(text)
    except ValidationError as exc:
        problems = [(_dotted(error["loc"]), plain_message(error["msg"])) for error in exc.errors()]
        raise InvalidRequest(problems) from None
    unwritable = _free_form_problem(request)
    if unwritable is not None:
        raise InvalidRequest([unwritable])
    return request


def _free_form_problem(request: SelfHealingRequest) -> tuple[str, str] | None:
    """(member, problem) when a value the contract takes as it is (context, routeTo.data,
    extra keys) could not be written as event data again: containers nested past
    DATA_DEPTH_LIMIT (the request being level 1), or a number JSON cannot hold (pydantic's
    parser reads NaN, Infinity and an overflowing number such as 1e999 into these)."""
    free: dict[str, Any] = {}
    if request.context:
        free["context"] = request.context
    if request.route_to is not None and request.route_to.data:
        free["routeTo"] = {"data": request.route_to.data}
    # Each item's extras stand where the item stands, so levels count as in the request.
    extras = [item.model_extra for item in request.evidence if item.model_extra]
    if extras:
        free["evidence"] = extras
    if request.playbook.model_extra:
        free["playbook"] = request.playbook.model_extra
    if not free:  # as most requests: nothing to walk
        return None
    member = too_deep(free)
    if member is not None:
        return str(member), too_deep_message()
    try:
        compact_json(free)
    except ValueError:
        for name, value in free.items():
            try:
                compact_json(value)
            except ValueError:
                return name, "holds a number JSON cannot hold (NaN or an infinity)"
    return None


class CompletionStatus(StrEnum):
    """How one self-healing step ended."""

    SCHEDULED = "scheduled"
    PAUSED = "paused"
    REMEDIATED = "remediated"
    EXHAUSTED = "exhausted"
    ESCALATED = "escalated"
    INVALID = "invalid"


class Completion(_Contract):
    """Data of `system/self.healing.completed`."""

    incident_id: str | None = None
    status: CompletionStatus
    attempt: int | None = None
    action: Literal["retry", "pause", "escalate"] | None = None
    delay_ms: int | None = None
    reason: str
    failure_class: str | None = None
    field: str | None = None
    source_function: str | None = None
    target_component: str | None = None


def _text_or_none(data: Any, key: str) -> str | None:
    if isinstance(data, Mapping):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value[:256]
    return None


def invalid_completion(error: InvalidRequest, data: Any) -> Completion:
    """The `completed{status: invalid}` answer, naming the first bad field."""
    incident_id = _text_or_none(data, "incidentId")
    if incident_id is not None and not re.fullmatch(INCIDENT_ID_PATTERN, incident_id):
        incident_id = None  # an invalid id must not leak into keys built from the answer
    attempt = data.get("attempt") if isinstance(data, Mapping) else None
    return Completion(
        incident_id=incident_id,
        status=CompletionStatus.INVALID,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
        reason=str(error)[:2000],
        field=error.field,
        source_function=_text_or_none(data, "sourceFunction"),
        target_component=_text_or_none(data, "targetComponent"),
    )
