"""The incident record: one budget per incident, changed only by pure transitions."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final

from annotated_types import Ge
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from pydantic.alias_generators import to_camel

from selfheal.core.contracts import RequestView
from selfheal.core.events import is_encodable, may_overflow, plain_message
from selfheal.core.records import record_builder

if TYPE_CHECKING:
    from selfheal.core.policy import Decision

HISTORY_LIMIT: Final = 50
_REASON_LIMIT: Final = 300
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# Stored records use camelCase keys like the events, and are read back strictly.
RECORD_CONFIG: Final = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    strict=True,
    extra="forbid",
)

Count = Annotated[int, Ge(0)]


class IncidentState(StrEnum):
    """Where an incident stands; escalated and remediated are closed."""

    OPEN = "open"
    SCHEDULED = "scheduled"
    PAUSED = "paused"
    ESCALATED = "escalated"
    REMEDIATED = "remediated"


CLOSED_STATES: Final = frozenset({IncidentState.ESCALATED, IncidentState.REMEDIATED})


def epoch_ms(moment: datetime) -> int:
    """Whole epoch milliseconds of an aware datetime, without float rounding."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def decode_record(adapter: TypeAdapter[Any], data: Any, what: str) -> Any:
    """Strictly read a stored record; raise ValueError naming every bad field."""
    try:
        # Strict JSON mode: enums from their values, no bool-as-int, no str-as-int.
        return adapter.validate_json(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, ValidationError):
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {plain_message(e['msg'])}"
                for e in exc.errors()
            ]
            raise ValueError(f"invalid {what}: " + "; ".join(problems)) from None
        raise ValueError(f"invalid {what}: not JSON data ({exc})") from None


def decode_record_json(adapter: TypeAdapter[Any], text: str, what: str) -> Any:
    """decode_record(adapter, json.loads(text), what), in one step when it can be.

    A stored record is JSON text already: validated as it is, unless it may hold
    something json.dumps would refuse (NaN, an infinity, a number out of range) or is
    refused, in which case the way through Python objects decides and words why.
    """
    plain = "NaN" not in text and "Infinity" not in text and is_encodable(text)
    if plain and not may_overflow(text):
        try:
            return adapter.validate_json(text)
        except ValidationError:
            pass
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"invalid {what}: not JSON data ({exc})") from None
    return decode_record(adapter, data, what)


@with_config(RECORD_CONFIG)
@dataclass(frozen=True)
class Incident:
    """One failing thing and its retry budget; the source of truth for `attempt`."""

    incident_id: str
    domain: str
    target_component: str
    source_function: str
    first_seen_ms: int
    deadline_ms: int | None
    updated_ms: int
    retries_used: Count = 0  # retries already scheduled: the budget counter
    pauses: Count = 0
    state: IncidentState = IncidentState.OPEN
    last_class: str | None = None
    last_reason: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    operator_resets: Count = 0

    @classmethod
    def new(cls, request: RequestView, now_ms: int, recovery_window_ms: int) -> Incident:
        """Open an incident for a first request; the deadline defaults to the window."""
        if recovery_window_ms <= 0:
            raise ValueError(f"recovery_window_ms must be > 0, got {recovery_window_ms}")
        deadline_at = request.deadline_at  # a property on some requests: read it once
        deadline = epoch_ms(deadline_at) if deadline_at is not None else now_ms + recovery_window_ms
        values: dict[str, Any] = {
            "incident_id": request.resolved_incident_id,
            "domain": request.domain,
            "target_component": request.target_component,
            "source_function": request.source_function,
            "first_seen_ms": now_ms,
            "deadline_ms": deadline,
            "updated_ms": now_ms,
            "history": ({"atMs": now_ms, "event": "opened", "requestAttempt": request.attempt},),
        }
        if cls is not Incident:
            return cls(**values)
        return _BUILD_INCIDENT(values)

    @property
    def closed(self) -> bool:
        """True once escalated or remediated."""
        return self.state in CLOSED_STATES

    @property
    def decision_key(self) -> str:
        """Key of the one decision due now; every transition moves it on."""
        # retries_used alone repeats across pauses and operator resets, so all three count.
        return f"{self.incident_id}/r{self.operator_resets}/a{self.retries_used}/p{self.pauses}"

    def _record(self, now_ms: int, event: str, **details: Any) -> tuple[dict[str, Any], ...]:
        entry = {"atMs": now_ms, "event": event, **details}
        return (*self.history, entry)[-HISTORY_LIMIT:]

    def after(self, decision: Decision, now_ms: int) -> Incident:
        """Apply a decision made for this incident's current key."""
        if decision.key != self.decision_key:
            raise ValueError(
                f"decision {decision.key} does not belong to incident state {self.decision_key}"
                " (stale or already applied)"
            )
        if self.closed:
            if decision.action == "escalate":
                return self  # re-escalating a closed incident changes nothing
            raise ValueError(
                f"incident {self.incident_id} is {self.state}; cannot {decision.action}"
            )
        changes: dict[str, Any] = {}
        if decision.action == "retry":
            changes = {"retries_used": self.retries_used + 1, "state": IncidentState.SCHEDULED}
        elif decision.action == "pause":
            changes = {"pauses": self.pauses + 1, "state": IncidentState.PAUSED}
        else:
            changes = {"state": IncidentState.ESCALATED}
        return self._with(
            changes,
            last_class=str(decision.failure_class),
            last_reason=decision.reason[:_REASON_LIMIT],
            updated_ms=now_ms,
            history=self._record(
                now_ms,
                str(decision.action),
                attempt=decision.attempt,
                delayMs=decision.delay_ms,
                failureClass=str(decision.failure_class),
                reason=decision.reason[:_REASON_LIMIT],
            ),
        )

    def _with(self, changes: dict[str, Any], **more: Any) -> Incident:
        """dataclasses.replace for fields this class names itself, built the quick way
        (core/records.py) instead of through replace()'s per-field __init__."""
        return _BUILD_INCIDENT({**self.__dict__, **changes, **more})

    def remediated(self, now_ms: int) -> Incident:
        """Close the incident as fixed; idempotent."""
        if self.state == IncidentState.REMEDIATED:
            return self
        return replace(
            self,
            state=IncidentState.REMEDIATED,
            updated_ms=now_ms,
            history=self._record(now_ms, "remediated"),
        )

    def reset_budget(self, now_ms: int, by: str, *, deadline_ms: int | None = None) -> Incident:
        """Operator retry: a fresh budget (and deadline when given), state open."""
        if self.state == IncidentState.REMEDIATED:
            raise ValueError(f"incident {self.incident_id} is remediated; nothing to retry")
        if not by.strip():
            raise ValueError("by must name the operator")
        return replace(
            self,
            retries_used=0,
            state=IncidentState.OPEN,
            operator_resets=self.operator_resets + 1,
            deadline_ms=self.deadline_ms if deadline_ms is None else deadline_ms,
            updated_ms=now_ms,
            history=self._record(
                now_ms, "budget_reset", by=by[:_REASON_LIMIT], retriesUsed=self.retries_used
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with camelCase keys."""
        result: dict[str, Any] = _INCIDENT.dump_python(self, mode="json", by_alias=True)
        return result

    @classmethod
    def from_dict(cls, data: Any) -> Incident:
        """Read a stored incident; raise ValueError naming bad fields."""
        result: Incident = decode_record(_INCIDENT, data, "incident record")
        return result

    @classmethod
    def from_json(cls, text: str) -> Incident:
        """Read a stored incident from its JSON text; raise ValueError naming bad fields."""
        result: Incident = decode_record_json(_INCIDENT, text, "incident record")
        return result


_INCIDENT: Final = TypeAdapter(Incident)
_BUILD_INCIDENT: Final = record_builder(Incident)
