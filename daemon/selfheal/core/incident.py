"""The stored records: an incident (one budget per incident, changed only by pure
transitions) and the decisions applied to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Final

from annotated_types import Ge
from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from pydantic.alias_generators import to_camel

from selfheal.core.classify import FailureClass
from selfheal.core.contracts import CompletionStatus, SelfHealingRequest
from selfheal.core.events import plain_message

HISTORY_LIMIT: Final = 50
_REASON_LIMIT: Final = 300
# What a history entry keeps of the request's problem summary.
_PROBLEM_LIMIT: Final = 160
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


def read_record(adapter: TypeAdapter[Any], text: str | bytes, what: str) -> Any:
    """Strictly read a stored record from its JSON text (enums from their values, no
    bool-as-int, no str-as-int); raise ValueError naming every bad field."""
    try:
        return adapter.validate_json(text)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {plain_message(e['msg'])}"
            for e in exc.errors()
        ]
        raise ValueError(f"invalid {what}: " + "; ".join(problems)) from None


class Action(StrEnum):
    """What the router does with a request."""

    RETRY = "retry"
    PAUSE = "pause"
    ESCALATE = "escalate"


class Rule(StrEnum):
    """Which policy rule produced a decision (machine-readable twin of `reason`)."""

    ALREADY_CLOSED = "already_closed"
    DEADLINE_PASSED = "deadline_passed"
    HARD_FAILURE = "hard_failure"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NO_ROUTE = "no_route"
    ROUTE_REFUSED = "route_refused"
    RETRY_PAST_DEADLINE = "retry_past_deadline"
    PAUSE = "pause"
    RETRY = "retry"
    ADVISED = "advised"  # the advisor changed the action or delay within the clamps


@with_config(RECORD_CONFIG)
@dataclass(frozen=True)
class Decision:
    """One routing decision, stored under `key` so redelivery reuses it."""

    incident_id: str
    attempt: Count  # the incident's retries_used when decided
    action: Action
    delay_ms: Count
    fire_at_ms: int
    failure_class: FailureClass
    reason: str
    rule: Rule
    decided_at_ms: int
    route_event: str | None = None
    route_data: dict[str, Any] = field(default_factory=dict)
    notify: bool = False
    advisor: dict[str, Any] | None = None
    pauses: Count = 0  # the incident's pauses when decided
    resets: Count = 0  # the incident's operator_resets when decided

    @property
    def key(self) -> str:
        """Same format as Incident.decision_key."""
        return f"{self.incident_id}/r{self.resets}/a{self.attempt}/p{self.pauses}"

    @property
    def completion_status(self) -> CompletionStatus:
        """Status for the `completed` event of this decision."""
        if self.action == Action.RETRY:
            return CompletionStatus.SCHEDULED
        if self.action == Action.PAUSE:
            return CompletionStatus.PAUSED
        if self.rule == Rule.BUDGET_EXHAUSTED:
            return CompletionStatus.EXHAUSTED
        return CompletionStatus.ESCALATED

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with camelCase keys."""
        result: dict[str, Any] = _DECISION.dump_python(self, mode="json", by_alias=True)
        return result

    def to_json(self) -> str:
        """The record as stored: camelCase JSON, written by pydantic-core's serializer."""
        return _DECISION.dump_json(self, by_alias=True).decode()

    @classmethod
    def from_json(cls, text: str) -> Decision:
        """Read a stored decision from its JSON text; raise ValueError naming bad fields."""
        result: Decision = read_record(_DECISION, text, "decision record")
        return result


_DECISION: Final = TypeAdapter(Decision)


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
    def new(cls, request: SelfHealingRequest, now_ms: int, recovery_window_ms: int) -> Incident:
        """Open an incident for a first request; the deadline defaults to the window."""
        if recovery_window_ms <= 0:
            raise ValueError(f"recovery_window_ms must be > 0, got {recovery_window_ms}")
        deadline_at = request.deadline_at
        deadline = epoch_ms(deadline_at) if deadline_at is not None else now_ms + recovery_window_ms
        return cls(
            incident_id=request.resolved_incident_id,
            domain=request.domain,
            target_component=request.target_component,
            source_function=request.source_function,
            first_seen_ms=now_ms,
            deadline_ms=deadline,
            updated_ms=now_ms,
            history=({"atMs": now_ms, "event": "opened", "requestAttempt": request.attempt},),
        )

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

    def after(
        self,
        decision: Decision,
        now_ms: int,
        *,
        problem: str | None = None,
        trace_id: str | None = None,
    ) -> Incident:
        """Apply a decision made for this incident's current key; `problem` (the
        request's summary, shortened) and `trace_id` (of the decision's span) go into
        the history entry."""
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
            **changes,
            last_class=str(decision.failure_class),
            last_reason=decision.reason[:_REASON_LIMIT],
            updated_ms=now_ms,
            history=self._record(
                now_ms,
                str(decision.action),
                attempt=decision.attempt,
                delayMs=decision.delay_ms,
                failureClass=str(decision.failure_class),
                rule=str(decision.rule),
                reason=decision.reason[:_REASON_LIMIT],
                **({"problem": problem[:_PROBLEM_LIMIT]} if problem else {}),
                **({"traceId": trace_id} if trace_id else {}),
            ),
        )

    def _with(self, **changes: Any) -> Incident:
        """dataclasses.replace(self, **changes), which the router pays on every request:
        replace's per-field bookkeeping costs more than building the record."""
        return type(self)(**{**vars(self), **changes})

    def remediated(self, now_ms: int) -> Incident:
        """Close the incident as fixed; idempotent."""
        if self.state == IncidentState.REMEDIATED:
            return self
        return self._with(
            state=IncidentState.REMEDIATED,
            updated_ms=now_ms,
            history=self._record(now_ms, "remediated"),
        )

    def reset_budget(
        self,
        now_ms: int,
        by: str,
        *,
        deadline_ms: int | None = None,
        rerun: str | None = None,
    ) -> Incident:
        """Operator retry: a fresh budget (and deadline when given), state open;
        `rerun` names the work started again at once (else the request is routed again)."""
        if self.state == IncidentState.REMEDIATED:
            raise ValueError(f"incident {self.incident_id} is remediated; nothing to retry")
        if not by.strip():
            raise ValueError("by must name the operator")
        return self._with(
            retries_used=0,
            state=IncidentState.OPEN,
            operator_resets=self.operator_resets + 1,
            deadline_ms=self.deadline_ms if deadline_ms is None else deadline_ms,
            updated_ms=now_ms,
            history=self._record(
                now_ms,
                "budget_reset",
                by=by[:_REASON_LIMIT],
                retriesUsed=self.retries_used,
                **({"rerun": rerun} if rerun else {}),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict with camelCase keys."""
        result: dict[str, Any] = _INCIDENT.dump_python(self, mode="json", by_alias=True)
        return result

    def to_json(self) -> str:
        """The record as stored: camelCase JSON, written by pydantic-core's serializer."""
        return _INCIDENT.dump_json(self, by_alias=True).decode()

    @classmethod
    def from_json(cls, text: str) -> Incident:
        """Read a stored incident from its JSON text; raise ValueError naming bad fields."""
        result: Incident = read_record(_INCIDENT, text, "incident record")
        return result


_INCIDENT: Final = TypeAdapter(Incident)
