"""Wire names of the self-healing events and the envelope every event travels in."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from ulid import ULID

# The scheduler tick (key = target + tick) or the CLI asks for one backup.
BACKUP_REQUESTED: Final = "system/backup.requested"
# The router asks the backup service to try a failed backup again (domain "backup").
BACKUP_RETRY_REQUESTED: Final = "system/backup.retry.requested"
# The backup service reports a verified artifact on the NAS.
BACKUP_COMPLETED: Final = "system/backup.completed"
# The backup service reports a failed backup; the failure adapter turns it into a request.
BACKUP_FAILED: Final = "system/backup.failed"
# Any domain asks the router to heal something (the seed's canonical request).
SELF_HEALING_REQUESTED: Final = "system/self.healing.requested"
# The router, the guarded restart or the backup service reports an outcome.
SELF_HEALING_COMPLETED: Final = "system/self.healing.completed"
# The router asks the guarded restart to restart a worker (domain "worker").
WORKER_RESTART_REQUESTED: Final = "system/worker.restart.requested"
# Name of the adapter function that turns backup failures into self-healing requests.
BACKUP_FAILURE_ROUTER: Final = "system/backup.failure.router"

# `domain/name`, lower case, so a stream key built from it needs no escaping.
EVENT_NAME_PATTERN: Final = r"^[a-z0-9_.-]+/[a-z0-9_.-]+$"
# Canonical upper-case Crockford base32; the first digit is 0-7 because the timestamp is 48 bits.
ULID_PATTERN: Final = r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
# W3C trace context, version 00; all-zero trace or parent ids are invalid by the spec.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_DIGITS = re.compile(r"[0-9]{1,16}")
# Fields a stream entry must carry; `traceparent` may be absent or empty.
_WIRE_REQUIRED: Final = ("id", "name", "data", "ts", "idempotencyKey")

# Validation context from_wire passes when `data` came out of its own strict parse
# (see _parse_plain): the data is JSON by construction, so the re-serialisation check is
# skipped. Every other check runs as usual.
_DATA_IS_JSON: Final = "selfheal.events.data_is_json"
_TRUSTED_DATA: Final = {_DATA_IS_JSON: True}
# Up to this many '{' / '[' (so at most this nesting) compact_json cannot hit the
# recursion limit where json.loads did not; deeper text takes the full check.
_PLAIN_MAX_OPENERS: Final = 100

# Mappings are invariant in their key type, so redis-py's dict[bytes, bytes] needs its own arm.
WireFields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]


class EventDecodeError(ValueError):
    """A stream entry is not a valid event; `field` names the bad wire field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def compact_json(value: Any) -> str:
    """Serialise to compact JSON, refusing NaN and infinities (not JSON)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class Event(BaseModel):
    """One event on the bus: `{id, name, data, ts, idempotencyKey, traceparent}`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, validate_by_name=True, validate_by_alias=True
    )

    id: str = Field(pattern=ULID_PATTERN)
    name: str = Field(min_length=3, max_length=200, pattern=EVENT_NAME_PATTERN)
    data: dict[str, Any]
    ts: int = Field(ge=0)
    idempotency_key: str = Field(alias="idempotencyKey", min_length=1, max_length=256)
    traceparent: str | None = None

    @field_validator("data")
    @classmethod
    def _data_is_json(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # to_wire must never fail later, so non-JSON data is refused at construction.
        context = info.context
        if context is _TRUSTED_DATA:
            return value  # from_wire parsed it strictly: JSON by construction
        try:
            compact_json(value)
        except (TypeError, ValueError, RecursionError):
            raise ValueError("must be JSON-serialisable (no NaN, no custom objects)") from None
        return value

    @field_validator("traceparent")
    @classmethod
    def _traceparent_is_w3c(cls, value: str | None) -> str | None:
        if value is not None and not _TRACEPARENT.fullmatch(value):
            raise ValueError("must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>")
        return value

    def to_wire(self) -> dict[str, str]:
        """Flat string fields for one Redis stream entry."""
        return {
            "id": self.id,
            "name": self.name,
            "data": compact_json(self.data),
            "ts": str(self.ts),
            "idempotencyKey": self.idempotency_key,
            "traceparent": self.traceparent or "",
        }

    @classmethod
    def from_wire(cls, fields: WireFields) -> Event:
        """Decode a stream entry; raise EventDecodeError naming the bad field."""
        text: dict[str, str] = {}
        for raw_key, raw_value in fields.items():
            key = _decode(raw_key, "(field name)")
            text[key] = _decode(raw_value, key)
        for key in _WIRE_REQUIRED:
            if key not in text:
                raise EventDecodeError(key, "missing")
        raw_data = text["data"]
        context: dict[str, bool] | None = _TRUSTED_DATA
        try:
            try:
                data = _parse_plain(raw_data)
            except _NotPlainJson:
                # NaN, an infinity or deep nesting: the plain parse and the full check
                # on the data decide, exactly as without the fast path.
                data, context = json.loads(raw_data), None
        except (ValueError, RecursionError):
            raise EventDecodeError("data", "not valid JSON") from None
        if not isinstance(data, dict):
            raise EventDecodeError("data", "must be a JSON object")
        if not _DIGITS.fullmatch(text["ts"]):
            raise EventDecodeError("ts", "must be a non-negative whole number of milliseconds")
        try:
            return cls.model_validate(
                {
                    "id": text["id"],
                    "name": text["name"],
                    "data": data,
                    "ts": int(text["ts"]),
                    "idempotencyKey": text["idempotencyKey"],
                    # Redis stream fields cannot be null, so "" stands for "no trace".
                    "traceparent": text.get("traceparent") or None,
                },
                context=context,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = str(first["loc"][0]) if first["loc"] else "(entry)"
            raise EventDecodeError(where, first["msg"]) from None


class _NotPlainJson(Exception):
    """The text holds something compact_json would refuse or might not re-serialise."""


def _refuse_constant(_name: str) -> Any:
    raise _NotPlainJson


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf, which compact_json refuses
        raise _NotPlainJson
    return value


def _parse_plain(text: str) -> Any:
    """json.loads for text whose result compact_json is sure to accept, else _NotPlainJson.

    json.loads yields only dicts with str keys, lists, str, int, float, bool and None;
    of those compact_json refuses only NaN and the infinities (parsed from the NaN /
    Infinity constants or an overflowing float), and it can hit the recursion limit
    only on nesting deeper than _PLAIN_MAX_OPENERS.
    """
    if text.startswith("\ufeff") or text.count("{") + text.count("[") > _PLAIN_MAX_OPENERS:
        raise _NotPlainJson  # json.loads refuses the BOM; the fallback says so
    return _PLAIN_DECODER.decode(text)


# One decoder for every entry (json.loads with hooks would build one per call).
_PLAIN_DECODER: Final = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _decode(value: bytes | str, field: str) -> str:
    """Text of one wire value; bytes must be UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise EventDecodeError(field, "not valid UTF-8") from None
    raise EventDecodeError(field, f"expected bytes or str, got {type(value).__name__}")


def new_event(
    name: str,
    data: Mapping[str, Any],
    *,
    now_ms: int,
    idempotency_key: str | None = None,
    traceparent: str | None = None,
) -> Event:
    """Build an event whose ULID carries `now_ms`; the key defaults to the id."""
    # A float would be read as seconds by python-ulid, so only whole milliseconds pass.
    if isinstance(now_ms, bool) or not isinstance(now_ms, int) or now_ms < 0:
        raise ValueError(f"now_ms must be a non-negative int of epoch milliseconds, got {now_ms!r}")
    event_id = str(ULID.from_timestamp(now_ms))
    return Event(
        id=event_id,
        name=name,
        data=dict(data),
        ts=now_ms,
        idempotency_key=idempotency_key if idempotency_key is not None else event_id,
        traceparent=traceparent,
    )
