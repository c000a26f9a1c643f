"""The span file: one redacted JSON object per span and line, rotated like a log."""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
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


class JsonlSpanExporter(SpanExporter):
    """Append one JSON line per span to a file, rotating like RotatingFileHandler."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._lock = threading.Lock()

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

    def _open(self) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # an older file may have been created with a looser umask
        return fd

    def _write(self, lines: list[bytes]) -> None:
        fd = self._open()
        try:
            size = os.fstat(fd).st_size
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

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Writes are synchronous, so there is never anything pending."""
        return True


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
