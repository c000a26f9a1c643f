"""Wire names of the self-healing events and the envelope every event travels in."""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Mapping
from operator import itemgetter
from typing import Any, Final, NamedTuple

import msgspec
from pydantic import (
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
# Compiled for the plain-entry path; fullmatch, so Python's "$ before a final newline"
# never applies and they decide like pydantic's (Rust) regex engine.
_ULID = re.compile(ULID_PATTERN)
_EVENT_NAME = re.compile(EVENT_NAME_PATTERN)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
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

# Validation context from_wire passes when `data` came out of its own strict parse
# (see _parse_plain): the data is JSON by construction, so the re-serialisation check is
# skipped. Every other check runs as usual.
_DATA_IS_JSON: Final = "selfheal.events.data_is_json"
_TRUSTED_DATA: Final = {_DATA_IS_JSON: True}
# Context from_wire passes otherwise. An entry read from a stream is already stored: the
# publishing limits are not applied to it, so it is handled (a request's contract has
# the same limits) or dead-lettered with its reason like any other entry.
_WIRE_DATA: Final = {_DATA_IS_JSON: False}
# Up to this many '{' / '[' (so at most this nesting) compact_json cannot hit the
# recursion limit where json.loads did not; deeper text takes the full check.
_PLAIN_MAX_OPENERS: Final = 100

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
# JSONEncoder.encode also builds its C encoder on every call, which is half the time on
# the small objects the router writes; this one is built once. It keeps no memo of the
# containers it is in (an exception part-way would leave one stale), so a circular
# structure ends in RecursionError instead of "Circular reference detected".
_MAKE_C_ENCODER: Final[Any] = getattr(json.encoder, "c_make_encoder", None)  # None without _json
_C_ENCODER: Final[Any] = (
    None
    if _MAKE_C_ENCODER is None
    else _MAKE_C_ENCODER(
        None,
        _COMPACT.default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        False,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )
)


def compact_json(value: Any) -> str:
    """Serialise to compact JSON, refusing NaN and infinities (not JSON).

    Raises TypeError for what JSON cannot hold, ValueError for NaN and the infinities,
    RecursionError for circular or too deeply nested containers (ValueError for
    circular ones on a Python without the _json accelerator).
    """
    if _C_ENCODER is None or type(value) is str:
        return _COMPACT.encode(value)
    return "".join(_C_ENCODER(value, 0))


_TEXT_JSON: Final = msgspec.json.Encoder()


def text_json(value: Mapping[str, Any]) -> str:
    """Compact JSON of a mapping of text, whole numbers, booleans, null and such mappings,
    as pydantic's to_json writes it (non-ASCII text as it is), by msgspec: quicker."""
    return _TEXT_JSON.encode(value).decode()


class Event(BaseModel):
    """One event on the bus: `{id, name, data, ts, idempotencyKey, traceparent}`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, validate_by_name=True, validate_by_alias=True
    )

    id: str = Field(pattern=ULID_PATTERN)
    name: str = Field(
        min_length=EVENT_NAME_MIN_LENGTH,
        max_length=EVENT_NAME_MAX_LENGTH,
        pattern=EVENT_NAME_PATTERN,
    )
    data: dict[str, Any]
    ts: int = Field(ge=0)
    idempotency_key: str = Field(
        alias="idempotencyKey", min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH
    )
    traceparent: str | None = None

    @field_validator("data")
    @classmethod
    def _data_is_json(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # to_wire must never fail later, so non-JSON data is refused at construction.
        context = info.context
        if context is _TRUSTED_DATA:
            return value  # from_wire parsed it strictly: JSON by construction
        publishing = context is not _WIRE_DATA
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
        if cls is Event:  # a subclass may validate more than _plain_entry knows
            event = _plain_entry(fields)
            if event is not None:
                return event
        return cls._from_wire_checked(fields)

    @classmethod
    def _from_wire_checked(cls, fields: WireFields) -> Event:
        """from_wire through model validation: decides any entry and words each refusal."""
        text: dict[str, str] = {}
        for raw_key, raw_value in fields.items():
            key = _decode(raw_key, "(field name)")
            text[key] = _decode(raw_value, key)
        for key in _WIRE_REQUIRED:
            if key not in text:
                raise EventDecodeError(key, "missing")
        raw_data = text["data"]
        context: dict[str, bool] = _TRUSTED_DATA
        try:
            try:
                data = _parse_plain(raw_data)
            except _NotPlainJson:
                # NaN, an infinity or deep nesting: the plain parse and the full check
                # on the data decide, exactly as without the fast path.
                data, context = json.loads(raw_data), _WIRE_DATA
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


def few_containers(text: str, limit: int = _PLAIN_MAX_OPENERS) -> bool:
    """True when the JSON `text` opens at most `limit` objects and arrays (counting
    brackets inside strings too: a cautious count), so it nests at most that deep."""
    return text.count("{") + text.count("[") <= limit


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
    if text.startswith("\ufeff") or not few_containers(text):
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


# Setters that bypass the frozen model's __setattr__: BaseModel's own descriptors for its
# __dict__ and the three slots, quicker than object.__setattr__ by name.
_SET_DICT: Final = BaseModel.__dict__["__dict__"].__set__
_SET_FIELDS_SET: Final = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_SET_EXTRA: Final = BaseModel.__dict__["__pydantic_extra__"].__set__
_SET_PRIVATE: Final = BaseModel.__dict__["__pydantic_private__"].__set__
_new_object: Final = object.__new__


def is_encodable(text: str) -> bool:
    """False for text with a lone surrogate, which pydantic refuses in a constrained str."""
    return text.isascii() or _SURROGATE.search(text) is None


def _plain_model_class(cls: type[BaseModel]) -> bool:
    """True when an instance is its __dict__, fields set and extras, so _plain_entry can
    make one: no model validators, __post_init__ work or private attributes to reproduce."""
    return not (
        cls.__pydantic_decorators__.model_validators
        or cls.__pydantic_post_init__
        or cls.__private_attributes__
        or cls.__pydantic_root_model__
    )


# The wire fields in the order _plain_entry unpacks them; traceparent may be absent.
_WIRE_FIELDS: Final = (*_WIRE_REQUIRED, "traceparent")
_TEXT_FIELDS: Final = itemgetter(*_WIRE_FIELDS)
_TEXT_FIELDS_UNTRACED: Final = itemgetter(*_WIRE_REQUIRED)
_EVENT_FIELDS: Final = frozenset(Event.model_fields)
_PLAIN_EVENTS: Final = _plain_model_class(Event)
# Event names that passed the name checks: a stream carries few, so each is matched
# once. Bounded, in case names come from outside.
_KNOWN_NAMES: Final[set[str]] = set()
_KNOWN_NAMES_LIMIT: Final = 1024


class Envelope(NamedTuple):
    """An ordinary stream entry's event fields, its data still JSON text (see plain_envelope)."""

    id: str
    name: str
    data: str
    ts: int
    idempotency_key: str
    traceparent: str | None


def _plain_fields(fields: WireFields) -> Envelope | None:
    """The entry's fields when every one but the data is within Event's constraints;
    None when not sure (see _plain_entry). The data is not looked at."""
    entry: Mapping[Any, Any] = fields  # typing.cast is a call, and this path counts them
    size = len(entry)
    if not _PLAIN_EVENTS or (size != 6 and size != 5):
        return None  # more fields: the full decode checks that the others are UTF-8 too
    # Text only: bytes fields (as hiredis gives them) take the full decode. The first key
    # is tested, not looked up: a bytes key of equal hash would be compared with "id",
    # a BytesWarning under `python -b`.
    if type(next(iter(entry))) is not str:
        return None
    try:
        if size == 6:
            event_id, name, data, ts, key, trace = _TEXT_FIELDS(entry)
        else:
            event_id, name, data, ts, key = _TEXT_FIELDS_UNTRACED(entry)
            trace = ""
    except (KeyError, TypeError):  # other field names
        return None
    if not (
        type(event_id) is str
        and type(name) is str
        and type(data) is str
        and type(ts) is str
        and type(key) is str
        and type(trace) is str
    ):
        return None
    if name not in _KNOWN_NAMES:
        if not (
            EVENT_NAME_MIN_LENGTH <= len(name) <= EVENT_NAME_MAX_LENGTH
            and _EVENT_NAME.fullmatch(name)
        ):
            return None
        if len(_KNOWN_NAMES) < _KNOWN_NAMES_LIMIT:
            _KNOWN_NAMES.add(name)
    if not (
        _ULID.fullmatch(event_id)
        and len(ts) <= 16
        and ts.isdigit()
        and ts.isascii()  # isdigit alone takes other scripts' digits too
        and 0 < len(key) <= IDEMPOTENCY_KEY_MAX_LENGTH
        and (key.isascii() or is_encodable(key))
        and (not trace or _TRACEPARENT.fullmatch(trace))
    ):
        return None
    return Envelope(event_id, name, data, int(ts), key, trace or None)


def plain_envelope(fields: WireFields) -> Envelope | None:
    """The envelope of an ordinary entry, its data left unparsed; None when not sure.

    Every field but the data is checked as _plain_entry checks it. The data is only
    checked to be free of what JSON parsers are known to read differently from
    json.loads, or what compact_json refuses: a byte order mark, a lone surrogate,
    more than _PLAIN_MAX_OPENERS containers, a number with an exponent or of 309 digits
    or more (NaN and Infinity are not JSON: a strict parser refuses them). So when a
    strict parser reads the data as a JSON object, from_wire returns an event with
    these fields and that data.
    """
    envelope = _plain_fields(fields)
    if envelope is None:
        return None
    data = envelope.data
    if (
        data.startswith("\ufeff")
        or not few_containers(data)
        or not is_encodable(data)
        or may_overflow(data)
    ):
        return None
    return envelope


def _plain_entry(fields: WireFields) -> Event | None:
    """The event of an ordinary entry, without model validation; None when not sure.

    Only entries on which these checks imply that _from_wire_checked would return an
    equal event get one: exactly the wire fields, all text;
    id, name, ts, idempotency key and traceparent within the model's constraints; data a
    plain JSON object (see _plain_data). Anything else, valid or not, takes
    _from_wire_checked, which decides it and words the error.
    """
    envelope = _plain_fields(fields)
    if envelope is None:
        return None
    parsed = _plain_data(envelope.data)
    if parsed is None:
        return None
    # What model_construct does, without its per-field bookkeeping (as dear as validating).
    event = _new_object(Event)
    _SET_DICT(
        event,
        {
            "id": envelope.id,
            "name": envelope.name,
            "data": parsed,
            "ts": envelope.ts,
            "idempotency_key": envelope.idempotency_key,
            "traceparent": envelope.traceparent,
        },
    )
    _SET_FIELDS_SET(event, set(_EVENT_FIELDS))
    _SET_EXTRA(event, None)
    _SET_PRIVATE(event, None)
    return event


# Up to this length, scanning the text for numbers that may overflow is cheaper than
# walking the parsed data for infinities; beyond, text is mostly long strings and the
# walk is cheaper.
_SCAN_LIMIT: Final = 2048
# A bytes.translate table that writes digits and signs as "0", e and E as "e", anything
# else as " ": a number with an exponent leaves "0e0", one of 309 digits or more a run of
# "0"s. (Deleting the rest instead would join neighbouring tokens into false alarms.)
_NUMBER_SHAPE: Final = bytes(
    b"0"[0] if byte in b"0123456789+-" else b"e"[0] if byte in b"eE" else b" "[0]
    for byte in range(256)
)
_LONG_NUMBER: Final = b"0" * 309  # 1e308 has 309 digits, and floats end near 1.8e308


def _plain_data(text: str) -> dict[str, Any] | None:
    """The JSON object in `text` when it is plain JSON (see _parse_plain), else None.

    pydantic_core's parser (jiter) is twice as fast as json's and returns the same value
    for text both accept (tests/unit/test_events_fast_path.py checks), save that it
    turns an overflowing number into an infinity, hence the check. What json accepts
    and it refuses (lone surrogates, nesting past 200 levels, NaN and Infinity) goes to
    _parse_plain.
    """
    try:
        data = from_json(text, allow_inf_nan=False, cache_strings="keys")
    except (ValueError, TypeError):  # TypeError: a lone surrogate in `text` itself
        try:
            data = _parse_plain(text)
        except (_NotPlainJson, ValueError, RecursionError):  # UnicodeDecodeError too
            return None
        return data if type(data) is dict else None
    if type(data) is not dict:
        return None
    if len(text) <= _SCAN_LIMIT and not may_overflow(text):
        return data
    return data if _all_finite(data) else None


def may_overflow(text: str) -> bool:
    """False when no number in the JSON `text` can parse to an infinity (it has no number
    with an exponent and none of 309 digits or more); True when one might.

    `text` must be encodable (no lone surrogate).
    """
    # find, not `in`: bytes.__contains__ first tries the needle as an int, and raising
    # that TypeError costs more than the search.
    shape = text.encode().translate(_NUMBER_SHAPE)
    return shape.find(b"0e0") >= 0 or (len(shape) >= 309 and shape.find(_LONG_NUMBER) >= 0)


def _all_finite(data: dict[str, Any]) -> bool:
    """False if a float anywhere in the parsed JSON is an infinity."""
    containers: list[dict[str, Any] | list[Any]] = [data]
    while containers:
        node = containers.pop()
        for item in node.values() if isinstance(node, dict) else node:
            kind = type(item)
            if kind is float:
                if not math.isfinite(item):
                    return False
            elif kind is dict or kind is list:
                containers.append(item)
    return True


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
        event.id,
        event.name,
        compact_json(event.data),
        event.ts,
        event.idempotency_key,
        event.traceparent,
    )
