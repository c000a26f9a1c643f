"""Wire format of the control socket: newline-delimited JSON requests and replies."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Final

import msgspec

from selfheal.core.text import unwritable_text
from selfheal.errors import ControlError

# Bumped only on incompatible changes; clients compare it to what they understand.
API_VERSION: Final = 1
# A request larger than this is refused with too_large (and the rest of its line discarded).
MAX_REQUEST_BYTES: Final = 1 << 20
# A request nested deeper than this is refused with bad_request before it is parsed:
# json.loads recurses once per level and raises RecursionError near the interpreter's
# limit (1000 frames, less what the task's stack already holds), so this stays well
# below it. It is still far above what event data may nest (core.events.
# DATA_DEPTH_LIMIT, 64, three levels down: request, params, data), so events.send
# refuses such data itself, naming the member that is too deep.
MAX_REQUEST_DEPTH: Final = 512

# Error codes sent in {"error": {"code": ...}}; handlers may add their own via ControlError.
BAD_REQUEST: Final = "bad_request"
# A method's params are not what it takes (see control/params.py).
INVALID_PARAMS: Final = "invalid_params"
TOO_LARGE: Final = "too_large"
UNKNOWN_METHOD: Final = "unknown_method"
FORBIDDEN: Final = "forbidden"
TOO_MANY_CONNECTIONS: Final = "too_many_connections"
IDLE_TIMEOUT: Final = "idle_timeout"
INTERNAL: Final = "internal"

RequestId = str | int | None


class RequestError(ControlError):
    """A request line could not be accepted; carries the id when it could be read."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """One parsed request line."""

    id: str | int
    method: str
    params: dict[str, Any] = field(default_factory=dict)


# A JSON string (escapes included), possessive so a long one is matched without
# backtracking; and a table that keeps only brackets, and one that scores them.
_JSON_STRING: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEP: Final = tuple(1 if b in b"[{" else -1 for b in range(256))
# A \uD800-\uDFFF escape, or one encoded as bytes (json.loads reads bytes with
# surrogatepass): a line without either holds no lone surrogate, so only a line with
# one is walked (core.text).
_SURROGATE: Final = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")


def nests_deeper(line: bytes, limit: int) -> bool:
    """True when the JSON text `line` nests deeper than `limit` levels (checked on the
    text, before any parsing)."""
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    # Brackets inside strings are text, not nesting; of the rest only brackets are kept,
    # and the running sum of their steps is the depth at each: the first one past the
    # limit answers (every step runs in C).
    brackets = _JSON_STRING.sub(b"", line).translate(None, _NOT_BRACKETS)
    depths = accumulate(map(_BRACKET_STEP.__getitem__, brackets))
    return next(filter(limit.__lt__, depths), None) is not None


def _valid_id(value: Any) -> bool:
    # bool is an int subclass but never a sensible request id.
    return isinstance(value, str | int) and not isinstance(value, bool)


def parse_request(line: bytes) -> Request:
    """Parse one request line; raise RequestError (code bad_request) naming the bad field."""
    too_deep = f"request is nested too deeply (max {MAX_REQUEST_DEPTH} levels)"
    if nests_deeper(line, MAX_REQUEST_DEPTH):
        raise RequestError(BAD_REQUEST, too_deep)
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(BAD_REQUEST, f"request is not valid JSON: {exc}") from None
    except RecursionError:  # not expected under the depth check; refused all the same
        raise RequestError(BAD_REQUEST, too_deep) from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, f"request must be a JSON object, not {type(obj).__name__}")
    raw_id = obj.get("id")
    request_id = raw_id if _valid_id(raw_id) else None
    if _SURROGATE.search(line) is not None:
        # Half a surrogate pair is not text: no reply, log or Redis write could carry it.
        where = unwritable_text(obj)
        if where is not None:
            message = f"{where} is not Unicode text (a lone surrogate escape \\ud800-\\udfff)"
            shown_id = request_id if unwritable_text(request_id) is None else None
            raise RequestError(BAD_REQUEST, message, shown_id)
    if "id" not in obj:
        raise RequestError(BAD_REQUEST, "missing field 'id'")
    if request_id is None:
        raise RequestError(BAD_REQUEST, "field 'id' must be a string or an integer")
    method = obj.get("method")
    if "method" not in obj:
        raise RequestError(BAD_REQUEST, "missing field 'method'", request_id)
    if not isinstance(method, str) or not method:
        raise RequestError(BAD_REQUEST, "field 'method' must be a non-empty string", request_id)
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError(BAD_REQUEST, "field 'params' must be a JSON object", request_id)
    return Request(id=request_id, method=method, params=params)


def result_reply(request_id: RequestId, result: Any) -> dict[str, Any]:
    """Build a success reply."""
    return {"id": request_id, "ok": True, "result": result, "api_version": API_VERSION}


def event_reply(request_id: RequestId, event: Any) -> dict[str, Any]:
    """Build one streamed event of a streaming reply."""
    return {"id": request_id, "ok": True, "event": event, "api_version": API_VERSION}


def error_reply(request_id: RequestId, code: str, message: str) -> dict[str, Any]:
    """Build an error reply."""
    return {
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
        "api_version": API_VERSION,
    }


# msgspec: a full status is encoded ~8x faster than by json.dumps (it matters with a
# hundred `status --watch` views at once). Values JSON has no form for (Path, enums
# of other types) become their str(); NaN and infinities become null.
_REPLY_ENCODER: Final = msgspec.json.Encoder(enc_hook=str)


def encode_reply(obj: Any) -> bytes:
    """Encode a reply as one JSON line; odd values (Path, datetime) become strings."""
    try:
        return _REPLY_ENCODER.encode(obj) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (a file name, a config key): json escapes it
        return json.dumps(obj, default=str).encode() + b"\n"


class Oversized:
    """Marker yielded by LineBuffer in place of a line longer than the limit."""

    __slots__ = ()


OVERSIZED: Final = Oversized()


class LineBuffer:
    """Split a byte stream into lines, replacing over-long lines by one OVERSIZED marker."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """Add received bytes; return the complete non-blank lines (or markers) now available."""
        self._buffer += data
        out: list[bytes | Oversized] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if self._discarding:
                    self._buffer.clear()
                elif len(self._buffer) > self.max_bytes:
                    # Refuse now rather than buffer an unbounded line; drop the rest later.
                    out.append(OVERSIZED)
                    self._buffer.clear()
                    self._discarding = True
                return out
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
            elif len(line) > self.max_bytes:
                out.append(OVERSIZED)
            elif line.strip():
                out.append(line)
