"""The span file: one redacted JSON object per span and line, rotated like a log."""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status
from pydantic_core import PydanticSerializationError, to_json

from selfheal.redact import is_secret_key, quick_redact_text, redact

log = logging.getLogger("selfheal.telemetry")


@functools.lru_cache(maxsize=256)
def _iso_second(seconds: int) -> str:
    # Spans of one batch share their second, so the date formatting is done once.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso_utc(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_iso_second(seconds)}.{rest // 1000:06d}Z"


def _plain(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # OTEL stores sequences as tuples; JSON wants lists.
    return {k: list(v) if isinstance(v, tuple) else v for k, v in (attributes or {}).items()}


def _redacted_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Same result as redact(_plain(attributes)), without its cost for plain values."""
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        plain = list(value) if isinstance(value, tuple) else value
        if is_secret_key(key):
            out[key] = redact({key: plain})[key]
        elif isinstance(plain, str):
            out[key] = quick_redact_text(plain)
        elif plain is None or isinstance(plain, int | float):
            out[key] = plain
        else:
            out[key] = redact(plain)
    return out


class RedactedSpan(ReadableSpan):
    """A finished span whose attributes were redacted when it was recorded."""


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """Render a finished span as the JSON object written to the span file."""
    rendered = _span_body(span)
    rendered["resource"] = _plain(span.resource.attributes)
    return rendered


def _span_body(span: ReadableSpan) -> dict[str, Any]:
    """span_to_dict without the resource (which every span of a provider shares)."""
    ctx = span.get_span_context()
    duration_ms = None
    if span.start_time is not None and span.end_time is not None:
        duration_ms = round((span.end_time - span.start_time) / 1e6, 3)
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
        "span_id": format(ctx.span_id, "016x") if ctx else None,
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "start_time": _iso_utc(span.start_time),
        "end_time": _iso_utc(span.end_time),
        "duration_ms": duration_ms,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "kind": span.kind.name,
        "attributes": (
            dict(span.attributes or {})
            if type(span) is RedactedSpan
            else _redacted_attributes(span.attributes)
        ),
        "events": [
            {
                "name": event.name,
                "time": _iso_utc(event.timestamp),
                "attributes": _redacted_attributes(event.attributes),
            }
            for event in span.events
        ],
    }


def span_line(span: ReadableSpan) -> bytes:
    """One line of the span file: span_to_dict(span) as compact JSON and a newline."""
    try:
        body = to_json(_span_body(span), fallback=str)
    except PydanticSerializationError:
        # Text that is not valid Unicode (a lone surrogate from a file name or a
        # publisher's data) is escaped the way the json module escapes it.
        return (json.dumps(span_to_dict(span), default=str, separators=(",", ":")) + "\n").encode()
    # The body ends with '}': the shared resource is spliced in as the last member.
    return body[:-1] + b',"resource":' + _resource_json(span.resource) + b"}\n"


class DecisionSpan(Protocol):
    """What `decision_lines` reads of an opened span (telemetry.OpenSpan)."""

    @property
    def name(self) -> str: ...
    @property
    def context(self) -> SpanContext: ...
    @property
    def parent(self) -> SpanContext | None: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def traceparent(self) -> str:
        """00-<trace id: 32 hex digits>-<span id: 16 hex digits>-<flags>, of `context`."""
        ...

    @property
    def parent_traceparent(self) -> str | None:
        """The parent's traceparent in the same form, or None for a root span."""
        ...


# The members of _span_body that are the same for every span a RedactedSpan built
# with the defaults gives (no events, status UNSET, kind INTERNAL), as to_json renders them.
_DEFAULT_STATUS = Status()
_STATUS_KIND: Final = (
    b',"status":'
    + to_json({"code": _DEFAULT_STATUS.status_code.name, "description": None})
    + b',"kind":'
    + to_json(SpanKind.INTERNAL.name)
    + b',"attributes":'
)
_EVENTS: Final = b',"events":[],"resource":'


@functools.lru_cache(maxsize=64)
def _name_json(name: str) -> str:
    return to_json(name).decode()


def decision_lines(
    spans: Sequence[DecisionSpan],
    attributes: Sequence[dict[str, Any]],
    end_ns: int,
    resource: Resource,
) -> list[bytes]:
    """The span-file lines of spans ended at `end_ns` with their recorded attributes.

    Each line is byte for byte what span_line gives for the same span recorded as a
    RedactedSpan (attributes already redacted, no events, default status and kind),
    without building SDK span objects: the router records hundreds per batch. Ids
    and times are plain ASCII, so only the name, the durations and the attributes
    need to_json (the durations in one call: no number holds a comma).
    """
    if not spans:
        return []
    tail = _EVENTS + _resource_json(resource) + b"}\n"
    seconds, rest = divmod(end_ns, 1_000_000_000)
    end_time = f"{_iso_second(seconds)}.{rest // 1000:06d}Z"
    durations = to_json([round((end_ns - span.start_ns) / 1e6, 3) for span in spans])
    lines: list[bytes] = []
    append = lines.append
    # The spans of a batch share their name and mostly their start second.
    last_name, name_json = "", _name_json("")
    last_second, second_text = -1, ""
    for span, values, duration in zip(spans, attributes, durations[1:-1].split(b","), strict=True):
        try:
            rendered = _attributes_json(values)
            if span.name != last_name:
                last_name, name_json = span.name, _name_json(span.name)
        except PydanticSerializationError:
            # Text that is not valid Unicode: span_line's own fallback renders it.
            recorded = RedactedSpan(
                span.name,
                span.context,
                span.parent,
                resource,
                values,
                start_time=span.start_ns,
                end_time=end_ns,
            )
            append(span_line(recorded))
            continue
        traceparent, parent = span.traceparent, span.parent_traceparent
        seconds, rest = divmod(span.start_ns, 1_000_000_000)
        if seconds != last_second:
            last_second, second_text = seconds, _iso_second(seconds)
        parent_id = "null" if parent is None else f'"{parent[36:52]}"'
        head = (
            f'{{"name":{name_json},"trace_id":"{traceparent[3:35]}",'
            f'"span_id":"{traceparent[36:52]}","parent_span_id":{parent_id},'
            f'"start_time":"{second_text}.{rest // 1000:06d}Z","end_time":"{end_time}",'
            '"duration_ms":'
        )
        append(head.encode() + duration + _STATUS_KIND + rendered + tail)
    return lines


# Attribute values msgspec writes exactly as to_json does (its floats differ: 1e16
# against 1e+16, and NaN), about four times as fast.
_MSGSPEC_TYPES: Final = frozenset({str, int, bool, type(None)})
_MSGSPEC_JSON: Final = msgspec.json.Encoder()


def _attributes_json(values: Mapping[str, Any]) -> bytes:
    """to_json(values, fallback=str); by msgspec when every value is text, a whole
    number, a bool or None (a decision's attributes are)."""
    if _MSGSPEC_TYPES.issuperset(map(type, values.values())):
        try:
            return _MSGSPEC_JSON.encode(values)
        except (TypeError, UnicodeEncodeError):  # a key that is not text; a lone surrogate
            pass
    return to_json(values, fallback=str)


_RESOURCE_SEEN: list[tuple[Resource, bytes]] = []


def _resource_json(resource: Resource) -> bytes:
    # Every span of a provider shares one resource object: render it once, by identity
    # (Resource.__hash__ serialises all its attributes).
    for seen, rendered in _RESOURCE_SEEN:
        if seen is resource:
            return rendered
    rendered = to_json(_plain(resource.attributes), fallback=str)
    _RESOURCE_SEEN[:] = [(resource, rendered), *_RESOURCE_SEEN[:3]]
    return rendered


# The writer thread's queue carries batches of lines, flush requests (an Event set
# once everything queued before it is written) and None, the order to stop.
_WriterItem = list[bytes] | threading.Event | None
# How long shutdown waits for the writer to drain (the SDK's own default).
SHUTDOWN_TIMEOUT_MS = 30_000
# Lines waiting for the writer (about 1 kB each) past which new ones are dropped, as
# the SDK's processor drops spans when its queue is full: a stuck disk must not
# take the daemon's memory with it.
MAX_PENDING_LINES = 65_536


class JsonlSpanExporter(SpanExporter):
    """Append one JSON line per span to a file, rotating like RotatingFileHandler.

    Two sources write to the file: `export` (the SDK's batch processor thread, for
    spans of the SDK's tracer) and `write_lines` (lines the caller rendered itself,
    written by this exporter's own writer thread so that the caller never touches
    the disk). One lock serialises every write and rotation.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        # Run by the writer thread before it writes queued lines: the SDK processor's
        # force_flush, so that SDK spans which ended before those lines were handed over
        # are written first. (One that ends while the writer wakes up may come first too:
        # the file is in end order up to that.)
        self.write_earlier: Callable[[], object] | None = None
        self._closed = False
        self._reset_writer()
        # A forked child has no writer thread, and the parent's locks may have been held
        # when it forked: it starts afresh (a weak reference, so no exporter is kept alive).
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(this))

    def _reset_writer(self) -> None:
        self._lock = threading.Lock()  # one write or rotation at a time
        self._state = threading.Lock()  # guards starting and stopping the writer
        self._queue: queue.SimpleQueue[_WriterItem] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._pending = 0  # lines queued and not written yet
        self._dropped = 0  # lines dropped since the queue was last full

    @property
    def closed(self) -> bool:
        """True once shut down: lines handed over later are dropped."""
        return self._closed

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the batch; never raises (the SDK worker thread must survive disk trouble)."""
        try:
            lines = [span_line(s) for s in spans]
            with self._lock:
                self._write(lines)
        except Exception:
            log.exception("could not write %d span(s) to %s", len(spans), self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def write_lines(self, lines: list[bytes]) -> None:
        """Queue rendered span lines for the writer thread (no disk I/O here).

        Dropped after shutdown, and while MAX_PENDING_LINES wait to be written.
        """
        if not lines:
            return
        with self._state:
            if self._closed:
                return
            if self._pending >= MAX_PENDING_LINES:
                self._dropped += len(lines)
                first_drop = self._dropped == len(lines)
            else:
                first_drop = False
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._run, name="selfheal-span-writer", daemon=True
                    )
                    self._writer.start()
                self._pending += len(lines)
                self._queue.put(lines)
                return
        if first_drop:
            log.warning("span writer is %d lines behind: dropping spans", MAX_PENDING_LINES)

    def _run(self) -> None:
        """The writer thread: write what is queued, a drained queue per file write."""
        items = self._queue
        while True:
            item = items.get()
            lines: list[bytes] = []
            flushed: list[threading.Event] = []
            stop = False
            while True:
                if isinstance(item, list):
                    lines += item
                elif item is None:
                    stop = True
                else:
                    flushed.append(item)
                try:
                    item = items.get_nowait()
                except queue.Empty:
                    break
            if lines:
                self._write_earlier()
                self._write_queued(lines)
                with self._state:
                    self._pending -= len(lines)
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    log.warning("span writer was behind: %d span(s) dropped", dropped)
            for done in flushed:
                done.set()
            if stop:
                return

    def _write_earlier(self) -> None:
        if self.write_earlier is None:
            return
        try:
            self.write_earlier()
        except Exception:
            log.exception("could not write the spans that ended before these")

    def _write_queued(self, lines: list[bytes]) -> None:
        # Disk trouble is logged and the lines dropped: the thread must live on.
        try:
            with self._lock:
                self._write(lines)
        except Exception:
            log.exception("could not write %d span(s) to %s", len(lines), self.path)

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:  # the directory is created on the first write
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, flags, 0o600)
        os.fchmod(fd, 0o600)  # an older file may have been created with a looser umask
        return fd

    def _write(self, lines: list[bytes]) -> None:
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
            if size + sum(map(len, lines)) <= self.max_bytes:
                _write_all(fd, b"".join(lines))  # the usual case: it all fits
                return
            pending: list[bytes] = []
            for line in lines:
                # Rotate before a line that would overflow, so no line is split across files.
                if size > 0 and size + len(line) > self.max_bytes:
                    _write_all(fd, b"".join(pending))
                    pending = []
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = self._open()
                    size = 0
                pending.append(line)
                size += len(line)
            _write_all(fd, b"".join(pending))
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self) -> None:
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every line handed to write_lines so far is written (or failed)."""
        timeout_s = max(timeout_millis, 0) / 1000
        with self._state:
            writer = self._writer
            if writer is None:
                return True
            if self._closed:
                done = None  # stopping: the writer drains everything first
            else:
                done = threading.Event()
                self._queue.put(done)
        if done is None:
            writer.join(timeout_s)
            return not writer.is_alive()
        return done.wait(timeout_s)

    def shutdown(self, timeout_millis: int = SHUTDOWN_TIMEOUT_MS) -> None:
        """Write what is queued and stop the writer thread; later lines are dropped."""
        with self._state:
            writer = self._writer
            if writer is not None and not self._closed:
                self._queue.put(None)
            self._closed = True
        if writer is not None:
            writer.join(max(timeout_millis, 0) / 1000)
            if writer.is_alive():
                log.warning("span writer still busy after %d ms: %s", timeout_millis, self.path)


def _reset_in_child(exporter: weakref.ref[JsonlSpanExporter]) -> None:
    alive = exporter()
    if alive is not None:
        alive._reset_writer()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Read the spans in the current file, skipping a partially written last line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    spans: list[dict[str, Any]] = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a writer is mid-line; the rest arrives on the next read
        if isinstance(item, dict):
            spans.append(item)
    return spans
