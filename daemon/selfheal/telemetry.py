"""Spans through the OpenTelemetry SDK: OTLP/HTTP when configured, else a rotating JSONL file.

One path for every span: the SDK's tracer makes it, RedactingSpanProcessor masks
its secrets when it ends, and the SDK's BatchSpanProcessor hands it to the
exporter on its own thread.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from selfheal.redact import (
    cached_quick_redact_text,
    is_secret_key,
    may_hold_secret,
    quick_redact_text,
    redact,
)
from selfheal.spanfile import JsonlSpanExporter, plain_dict

ATTRIBUTE_PREFIX = "selfheal."
# Short enough that a reader of the span file sees a decision almost as it happens.
BATCH_SCHEDULE_DELAY_MS = 500
# Ended spans waiting for the exporter, past which the SDK drops new ones: a stuck
# disk or collector must not take the daemon's memory with it. The router ends a
# consumer batch's spans at once, so this is many batches, not the SDK's 2048.
MAX_QUEUED_SPANS = 65_536
_PROPAGATOR = TraceContextTextMapPropagator()
# The parent of a span that continues no trace: not whatever span is current.
_NO_PARENT = Context()

ExporterKind = Literal["otlp", "jsonl"]


def _redacted_attributes(attributes: Attributes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in plain_dict(attributes or {}).items():
        if is_secret_key(key):
            out[key] = redact({key: value})[key]
        elif isinstance(value, str):
            out[key] = cached_quick_redact_text(value)  # values repeat from span to span
        elif isinstance(value, tuple):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def _may_need_redaction(attributes: Attributes) -> bool:
    texts: list[str] = []
    for key, value in (attributes or {}).items():
        if is_secret_key(key) or isinstance(value, tuple):
            return True
        if isinstance(value, str):
            texts.append(value)
    return may_hold_secret("\n".join(texts))


def redacted_span(span: ReadableSpan) -> ReadableSpan:
    """The finished span with secrets masked in its attributes, events, links and status
    (the span itself when it holds nothing that could be one, as most spans do)."""
    status, events, links = span.status, span.events, span.links
    if not (events or links or status.description) and not _may_need_redaction(span.attributes):
        return span
    if status.description:
        status = Status(status.status_code, quick_redact_text(status.description))
    return ReadableSpan(
        span.name,
        span.context,
        span.parent,
        span.resource,
        _redacted_attributes(span.attributes),
        # () when empty, as a decision's are: queued spans are fewer objects to collect.
        events=tuple(
            Event(event.name, _redacted_attributes(event.attributes), event.timestamp)
            for event in events
        )
        if events
        else (),
        links=tuple(Link(link.context, _redacted_attributes(link.attributes)) for link in links)
        if links
        else (),
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingSpanProcessor(SpanProcessor):
    """Passes each ended span on to `inner` redacted: the one place spans are redacted."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        """Pass the start on (the span holds nothing to redact until it ends)."""
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        """Pass the span on redacted."""
        self.inner.on_end(redacted_span(span))

    def shutdown(self) -> None:
        """Shut the inner processor (and its exporter) down."""
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what the inner processor holds."""
        return self.inner.force_flush(timeout_millis)


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise RuntimeError(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed;"
            " install it with: pip install 'selfheal[otlp]'"
        ) from exc
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        env["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    )
    headers: dict[str, str] = {}
    for pair in env.get("OTEL_EXPORTER_OTLP_HEADERS", "").split(","):
        name, sep, value = pair.partition("=")
        if sep and name.strip():
            headers[unquote(name.strip())] = unquote(value.strip())  # values are URL-encoded
    return OTLPSpanExporter(endpoint=endpoint, headers=headers or None)


def _encode_attribute(value: Any) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def prefixed_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """Prefix keys with `selfheal.`, drop None and JSON-encode non-primitives."""
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        if value is None:
            continue
        name = key if key.startswith(ATTRIBUTE_PREFIX) else ATTRIBUTE_PREFIX + key
        out[name] = _encode_attribute(value)
    return out


class Telemetry:
    """The daemon's tracer and its provider (which owns the processor and exporter)."""

    def __init__(
        self, provider: TracerProvider, exporter_kind: ExporterKind, span_file: Path | None
    ) -> None:
        self.provider = provider
        self.exporter_kind: ExporterKind = exporter_kind
        self.span_file = span_file
        self.tracer = provider.get_tracer("selfheal")

    @contextmanager
    def decision_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        context: Context | None = None,
        start_ns: int | None = None,
    ) -> Iterator[Span]:
        """A span around a block (the current span inside it), begun at `start_ns` if
        given; an exception marks it ERROR and propagates. Without `context` it is a
        child of the current span. Attributes set on it later need the `selfheal.`
        prefix; all of them are redacted when it ends."""
        with self.tracer.start_as_current_span(
            name,
            context=context,
            attributes=prefixed_attributes(attributes),
            start_time=start_ns,
            # Only an Exception is an error: a cancellation (BaseException) is not.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                span.record_exception(exc, escaped=True)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    def start_span(self, name: str, *, traceparent: str | None, start_ns: int) -> Span:
        """Start a span that began at `start_ns`, a child of the span `traceparent`
        names (a new trace without one); the caller ends it with span.end(end_time=...).

        A span that is never ended is never recorded.
        """
        return self.tracer.start_span(
            name, context=context_from_traceparent(traceparent) or _NO_PARENT, start_time=start_ns
        )

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export every ended span now; False if the deadline passed first."""
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter; later spans are dropped."""
        self.provider.shutdown()


def setup_telemetry(
    *,
    service_name: str,
    service_version: str,
    span_file: Path,
    max_bytes: int,
    backups: int,
    env: Mapping[str, str] | None = None,
) -> Telemetry:
    """Build a private TracerProvider exporting over OTLP/HTTP or to the JSONL span file."""
    env = os.environ if env is None else env
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.version": service_version,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
    )
    exporter: SpanExporter
    kind: ExporterKind
    file: Path | None
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporter, kind, file = _otlp_exporter(env), "otlp", None
    else:
        exporter = JsonlSpanExporter(span_file, max_bytes=max_bytes, backups=backups)
        kind, file = "jsonl", span_file
    # Every decision is kept: sampling would break "one incident is one trace".
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
    batches = BatchSpanProcessor(
        exporter,
        max_queue_size=MAX_QUEUED_SPANS,
        schedule_delay_millis=BATCH_SCHEDULE_DELAY_MS,
    )
    provider.add_span_processor(RedactingSpanProcessor(batches))
    return Telemetry(provider, kind, file)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) inside a W3C traceparent, if it holds one."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def current_traceparent(span: Span | None = None) -> str | None:
    """Return the W3C traceparent of `span` (default: the current span), or None."""
    context = (span if span is not None else trace.get_current_span()).get_span_context()
    if not context.is_valid:
        return None
    # What the W3C propagator's inject writes (version 00), without its carrier and
    # Context: the router asks this of every span.
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def context_from_traceparent(tp: str | None) -> Context | None:
    """Return a Context whose parent is the span named by `tp`; None if missing or invalid."""
    if not tp:
        return None
    # Extract into an empty Context so an invalid header cannot fall back to the current span.
    ctx = _PROPAGATOR.extract({"traceparent": tp}, context=Context())
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx
