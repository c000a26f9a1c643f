"""Wire names of the self-healing events and the envelope every event travels in."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, TypeVar

import msgspec
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import from_json
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
# The scheduler asks for a restore drill of a target's newest artifact.
BACKUP_DRILL_REQUESTED: Final = "system/backup.drill.requested"
# The router asks the guarded restart to restart a worker (domain "worker").
WORKER_RESTART_REQUESTED: Final = "system/worker.restart.requested"
# Name of the adapter function that turns backup failures into self-healing requests.
BACKUP_FAILURE_ROUTER: Final = "system/backup.failure.router"

# `domain/name`, lower case, so a stream key built from it needs no escaping.
EVENT_NAME_PATTERN: Final = r"^[a-z0-9_.-]+/[a-z0-9_.-]+$"
EVENT_NAME_MIN_LENGTH: Final = 3
EVENT_NAME_MAX_LENGTH: Final = 200
IDEMPOTENCY_KEY_MAX_LENGTH: Final = 256
# Canonical upper-case Crockford base32; the first digit is 0-7 because the timestamp is 48 bits.
ULID_PATTERN: Final = r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$"
# W3C trace context, version 00; all-zero trace or parent ids are invalid by the spec.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_DIGITS = re.compile(r"[0-9]{1,16}")
# Fields a stream entry must carry; `traceparent` may be absent or empty.
_WIRE_REQUIRED: Final = ("id", "name", "data", "ts", "idempotencyKey")

# What an event we publish may carry: its data nests at most DATA_DEPTH_LIMIT levels
# (the data object itself is level 1) and is at most EVENT_DATA_LIMIT characters of
# JSON as it is written to the stream. Deeper data passed every check and then failed
# to serialise in the router (pydantic stops at 255 levels), on every delivery; a
# megabyte of data was stored, then stored again by its dead-letter copy. The size is
# eight times the contract's longest free-text field (contracts.FREE_TEXT_LIMIT,
# 65,536 characters), so one at that length fits even when every character is written
# as a six-character \uXXXX escape, with room for the rest of the request.
DATA_DEPTH_LIMIT: Final = 64
EVENT_DATA_LIMIT: Final = 512 * 1024

# An entry read from a stream is already stored: the publishing limits are not applied
# to its data, so it is handled (a request's contract has the same limits) or
# dead-lettered with its reason like any other entry. from_wire passes this context.
_WIRE_DATA: Final = {"selfheal.events.from_wire": True}

# Mappings are invariant in their key type, so redis-py's dict[bytes, bytes] needs its own arm.
WireFields = Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]


class InvalidEvent(ValueError):
    """An event cannot be built for publishing; the message names the field and the rule."""


def plain_message(message: str) -> str:
    """Drop pydantic's "Value error, " prefix from our own validators' messages."""
    return message.removeprefix("Value error, ")


class EventDecodeError(ValueError):
    """A stream entry is not a valid event; `field` names the bad wire field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


# One encoder for every call: json.dumps builds a new one whenever options are given.
_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def compact_json(value: Any) -> str:
    """Serialise to compact JSON, refusing NaN and infinities (not JSON).

    Raises TypeError for what JSON cannot hold, ValueError for NaN, the infinities and
    circular containers, RecursionError for too deeply nested ones.
    """
    return _COMPACT.encode(value)


_TEXT_JSON: Final = msgspec.json.Encoder()


def text_json(value: Mapping[str, Any]) -> str:
    """Compact JSON of a mapping of text, whole numbers, booleans, null and such mappings,
    as pydantic's to_json writes it (non-ASCII text as it is), by msgspec: quicker."""
    return _TEXT_JSON.encode(value).decode()


def too_deep(value: Any, limit: int = DATA_DEPTH_LIMIT) -> str | int | None:
    """The key (or index) of the member of the object or list `value` in which
    containers nest deeper than `limit` levels, `value` itself being level 1; None when
    none does. Iterative, so no depth makes it raise."""
    stack: list[tuple[Any, int, str | int]]
    if isinstance(value, dict):
        stack = [(item, 2, key) for key, item in value.items()]
    elif isinstance(value, list):
        stack = [(item, 2, index) for index, item in enumerate(value)]
    else:
        return None
    while stack:
        node, depth, member = stack.pop()
        if isinstance(node, dict):
            inside: Any = node.values()
        elif isinstance(node, list):
            inside = node
        else:
            continue
        if depth > limit:
            return member
        stack.extend((item, depth + 1, member) for item in inside)
    return None


def too_deep_message() -> str:
    """The problem of data past DATA_DEPTH_LIMIT, the same wherever it is found."""
    return f"nested too deeply (max {DATA_DEPTH_LIMIT} levels)"


def too_large(size: int) -> str | None:
    """The problem of data whose JSON is `size` characters, if that is past EVENT_DATA_LIMIT."""
    if size <= EVENT_DATA_LIMIT:
        return None
    return f"{size} characters of JSON, more than the {EVENT_DATA_LIMIT} allowed"


def _traceparent_is_w3c(value: str | None) -> str | None:
    if value is not None and not _TRACEPARENT.fullmatch(value):
        raise ValueError("must be a W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>")
    return value


class _Head(BaseModel):
    """The fields every event carries besides its data."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, validate_by_name=True, validate_by_alias=True
    )

    id: str = Field(pattern=ULID_PATTERN)
    name: str = Field(
        min_length=EVENT_NAME_MIN_LENGTH,
        max_length=EVENT_NAME_MAX_LENGTH,
        pattern=EVENT_NAME_PATTERN,
    )
    ts: int = Field(ge=0)
    idempotency_key: str = Field(
        alias="idempotencyKey", min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH
    )
    traceparent: Annotated[str | None, AfterValidator(_traceparent_is_w3c)] = None


class Envelope(_Head):
    """A stream entry's event with its data left as the JSON text it came as.

    The batch router reads a request straight from that text (its contract decides
    whether it is one), and stores and re-sends it as it came.
    """

    data: str

    @classmethod
    def from_wire(cls, fields: WireFields) -> Envelope:
        """Check an entry's event fields, not its data; raise EventDecodeError naming
        the bad field."""
        text = _wire_text(fields)
        return _decoded(cls, {**_head(text), "data": text["data"]}, None)


class Event(_Head):
    """One event on the bus: `{id, name, data, ts, idempotencyKey, traceparent}`."""

    data: dict[str, Any]

    @field_validator("data")
    @classmethod
    def _data_is_json(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # to_wire must never fail later, so non-JSON data is refused at construction.
        publishing = info.context is not _WIRE_DATA
        if publishing:
            member = too_deep(value)
            if member is not None:
                raise ValueError(f"member {member!r} is {too_deep_message()}")
        try:
            text = compact_json(value)
        except (TypeError, ValueError, RecursionError):
            raise ValueError("must be JSON-serialisable (no NaN, no custom objects)") from None
        problem = too_large(len(text)) if publishing else None
        if problem is not None:
            raise ValueError(problem)
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
        text = _wire_text(fields)
        try:
            # pydantic's parser; NaN and the infinities are not JSON. (An overflowing
            # number still parses to an infinity: the data check refuses it.)
            data = from_json(text["data"], allow_inf_nan=False)
        except ValueError as exc:
            raise EventDecodeError("data", f"not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise EventDecodeError("data", "must be a JSON object")
        return _decoded(cls, {**_head(text), "data": data}, _WIRE_DATA)


def _wire_text(fields: WireFields) -> dict[str, str]:
    """An entry's fields as text, the required ones present and `ts` digits."""
    text: dict[str, str] = {}
    for raw_key, raw_value in fields.items():
        # Text as the consumer reads it is taken as it is, without a call per field.
        key = raw_key if type(raw_key) is str else _decode(raw_key, "(field name)")
        text[key] = raw_value if type(raw_value) is str else _decode(raw_value, key)
    for key in _WIRE_REQUIRED:
        if key not in text:
            raise EventDecodeError(key, "missing")
    if not _DIGITS.fullmatch(text["ts"]):
        raise EventDecodeError("ts", "must be a non-negative whole number of milliseconds")
    return text


def _head(text: dict[str, str]) -> dict[str, Any]:
    return {
        "id": text["id"],
        "name": text["name"],
        "ts": int(text["ts"]),
        "idempotencyKey": text["idempotencyKey"],
        # Redis stream fields cannot be null, so "" stands for "no trace".
        "traceparent": text.get("traceparent") or None,
    }


_M = TypeVar("_M", bound=_Head)


def _decoded(cls: type[_M], values: dict[str, Any], context: Any) -> _M:
    """cls validated from an entry's values; the first problem as EventDecodeError."""
    try:
        return cls.model_validate(values, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else "(entry)"
        raise EventDecodeError(where, plain_message(first["msg"])) from None


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
    try:
        return Event(
            id=event_id,
            name=name,
            data=dict(data),
            ts=now_ms,
            idempotency_key=idempotency_key if idempotency_key is not None else event_id,
            traceparent=traceparent,
        )
    except ValidationError as exc:
        # One line naming the field, without pydantic's echo of the (maybe huge) input.
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "event"
        raise InvalidEvent(f"{where}: {plain_message(first['msg'])}") from None


def wire_fields(
    name: str,
    data_json: str,
    *,
    now_ms: int,
    idempotency_key: str | None,
    traceparent: str | None,
) -> dict[str, str]:
    """The stream fields of a new event whose data is JSON text already (what
    new_event(...).to_wire() gives, without parsing and re-writing the data)."""
    event_id = str(ULID.from_timestamp(now_ms))
    return {
        "id": event_id,
        "name": name,
        "data": data_json,
        "ts": str(now_ms),
        "idempotencyKey": idempotency_key if idempotency_key is not None else event_id,
        "traceparent": traceparent or "",
    }


def envelope_of(event: Event) -> Envelope:
    """The envelope of a decoded event (its data written back to JSON text)."""
    return Envelope(
        id=event.id,
        name=event.name,
        data=compact_json(event.data),
        ts=event.ts,
        idempotency_key=event.idempotency_key,
        traceparent=event.traceparent,
    )
