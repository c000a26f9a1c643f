"""The span file: the SDK's JSON of one span per line, rotated by size like a log."""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import Attributes

log = logging.getLogger("selfheal.telemetry")


def span_line(span: ReadableSpan, resource: Any) -> bytes:
    """One line of the span file: the object `span.to_json()` gives, as compact JSON.

    Built from the span's public properties as to_json builds it, because to_json
    itself costs several times as much: it renders the resource (the same for
    every span) twice per span. `resource` is that rendering, made once
    (resource_object). Floats that are not numbers (NaN, Infinity), which strict
    JSON lacks, are written as null.
    """
    context, parent, status = span.context, span.parent, span.status
    rendered = {
        "name": span.name,
        "context": _context(context) if context else None,
        "kind": str(span.kind),
        "parent_id": f"0x{parent.span_id:016x}" if parent else None,
        # As to_json: a span's missing (or zero) time is null, an event's is not.
        "start_time": _iso(span.start_time) if span.start_time else None,
        "end_time": _iso(span.end_time) if span.end_time else None,
        "status": (
            {"status_code": status.status_code.name, "description": status.description}
            if status.description
            else {"status_code": status.status_code.name}
        ),
        "attributes": _attributes(span.attributes),
        "events": [
            {
                "name": event.name,
                "timestamp": _iso(event.timestamp),
                "attributes": _attributes(event.attributes),
            }
            for event in span.events
        ],
        "links": [
            {"context": _context(link.context), "attributes": _attributes(link.attributes)}
            for link in span.links
        ],
        "resource": resource,
    }
    try:
        return _ENCODER.encode(rendered) + b"\n"
    except UnicodeEncodeError:  # a lone surrogate (os.fsdecode leaves them): json escapes it
        return json.dumps(rendered).encode() + b"\n"


def resource_object(resource: Resource) -> Any:
    """The resource as `ReadableSpan.to_json()` renders it."""
    return json.loads(resource.to_json(indent=None))


_ENCODER = msgspec.json.Encoder()


def _context(context: SpanContext) -> dict[str, str]:
    return {
        "trace_id": f"0x{context.trace_id:032x}",
        "span_id": f"0x{context.span_id:016x}",
        "trace_state": repr(context.trace_state),
    }


def _attributes(attributes: Attributes) -> dict[str, Any] | None:
    return None if attributes is None else plain_dict(attributes)


def plain_dict(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A dict copy of span attributes. A span's are a read-only view of the SDK's own
    mapping: copying that (the view's copy()) is several times quicker than reading it
    item by item."""
    if isinstance(attributes, MappingProxyType):
        copied: dict[str, Any] = attributes.copy()
        return copied
    return dict(attributes)


@functools.lru_cache(maxsize=16)  # the spans of a router round share their end time
def _iso(ns: int) -> str:
    """What to_json writes for a time (its ns_to_iso_str), through isoformat: a
    third of strftime's cost."""
    moment = datetime.fromtimestamp(ns / 1e9, tz=UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds") + "Z"


class JsonlSpanExporter(SpanExporter):
    """Append one JSON line per span to a file, rotating like RotatingFileHandler.

    It runs under the SDK's BatchSpanProcessor, whose one worker thread calls
    `export` (and whose force_flush calls it under the same lock), so writes never
    overlap. The spans it gets were redacted by telemetry.RedactingSpanProcessor.
    """

    def __init__(self, path: Path, *, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        # The resource of the last batch and its rendering (a provider's spans share one).
        self._resource: tuple[Resource, Any] | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the batch; never raises (the SDK's worker thread must survive disk trouble)."""
        try:
            self._write([span_line(span, self._resource_of(span)) for span in spans])
        except Exception:
            log.exception("could not write %d span(s) to %s", len(spans), self.path)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _resource_of(self, span: ReadableSpan) -> Any:
        # By identity: Resource's own __eq__ and __hash__ serialise its attributes.
        if self._resource is None or self._resource[0] is not span.resource:
            self._resource = (span.resource, resource_object(span.resource))
        return self._resource[1]

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
