"""One OpenTelemetry span per decision: OTLP/HTTP when configured, else a rotating JSONL file."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from selfheal.redact import (
    cached_quick_redact_text,
    is_secret_key,
    redact,
    redact_text,
    texts_to_redact,
)
from selfheal.spanfile import JsonlSpanExporter, RedactedSpan, decision_lines

log = logging.getLogger("selfheal.telemetry")

ATTRIBUTE_PREFIX = "selfheal."
# Short enough that `selfheal spans --follow` sees a decision almost as it happens.
BATCH_SCHEDULE_DELAY_MS = 500
_PROPAGATOR = TraceContextTextMapPropagator()
# What provider.get_tracer("selfheal") reports (the SDK stores no version as "").
_SCOPE = InstrumentationScope("selfheal", "", "")
# As the SDK's tracer sets them: sampled, and "random trace id" where the SDK knows it.
_RANDOM_ID = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))
_ROOT_FLAGS = TraceFlags(TraceFlags.SAMPLED | _RANDOM_ID)
_INHERITED_FLAGS = TraceFlags.SAMPLED | _RANDOM_ID
_PRIMITIVES = (str, bool, int, float)  # attribute values a span carries as they are

ExporterKind = Literal["otlp", "jsonl"]
# The canonical W3C form; anything else goes through the propagator.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _recorded_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Primitive attribute values as a span records them, secrets masked (for every exporter)."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if not isinstance(value, _PRIMITIVES):
            continue
        if is_secret_key(key):
            out[key] = redact({key: value})[key]
        elif isinstance(value, str):
            out[key] = cached_quick_redact_text(value)
        else:
            out[key] = value
    return out


_EXACT_PRIMITIVES = frozenset({str, bool, int, float})
_PLAIN_KEYS: set[str] = set()  # attribute keys known not to name a secret
_PLAIN_KEYS_MAX = 4096


def _plain_keys(attributes: Mapping[str, Any]) -> bool:
    """True if no key of `attributes` names a secret (remembering the keys that do not)."""
    if len(_PLAIN_KEYS) > _PLAIN_KEYS_MAX:
        _PLAIN_KEYS.clear()
    plain = True
    for key in attributes:
        if isinstance(key, str) and not is_secret_key(key):
            _PLAIN_KEYS.add(key)
        else:
            plain = False
    return plain


def _record_batch(
    spans: Iterable[tuple[OpenSpan, Mapping[str, Any]]],
) -> tuple[list[OpenSpan], list[dict[str, Any]]]:
    """The sampled spans, and their attributes exactly as _recorded_attributes records them.

    Most attributes are primitives under plain keys, and their text holds no secret:
    that text is tested in one pass over the batch instead of value by value, and
    such attributes are recorded as they are (copied only to redact a text).
    """
    opened: list[OpenSpan] = []
    recorded: list[dict[str, Any]] = []
    tested: list[int] = []  # the indexes in `recorded` of the attributes tested below
    exact, plain_keys = _EXACT_PRIMITIVES, _PLAIN_KEYS
    for span, attributes in spans:
        if not span.sampled:
            continue
        opened.append(span)
        if (
            type(attributes) is dict
            and exact.issuperset(map(type, attributes.values()))
            and (plain_keys.issuperset(attributes) or _plain_keys(attributes))
        ):
            tested.append(len(recorded))
            recorded.append(attributes)
        else:
            recorded.append(_recorded_attributes(attributes))
    suspects = texts_to_redact(
        value for index in tested for value in recorded[index].values() if type(value) is str
    )
    if suspects:
        # Rare: record the attributes holding such text redacted, in a copy.
        for index in tested:
            values = recorded[index]
            if any(type(value) is str and value in suspects for value in values.values()):
                recorded[index] = {
                    key: cached_quick_redact_text(value) if type(value) is str else value
                    for key, value in values.items()
                }
    return opened, recorded


def recorded_span(
    span: OpenSpan, attributes: Mapping[str, Any], end_ns: int, resource: Resource
) -> RedactedSpan:
    """The SDK's finished span for an opened decision span, its attributes redacted."""
    return RedactedSpan(
        span.name,
        span.context,
        span.parent,
        resource,
        _recorded_attributes(attributes),
        start_time=span.start_ns,
        end_time=end_ns,
        instrumentation_scope=_SCOPE,
    )


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
    """Prefix keys with `selfheal.`, redact values, drop None and JSON-encode non-primitives."""
    out: dict[str, Any] = {}
    for key, value in redact(dict(attributes or {})).items():
        if value is None:
            continue
        name = key if key.startswith(ATTRIBUTE_PREFIX) else ATTRIBUTE_PREFIX + key
        out[name] = _encode_attribute(value)
    return out


class Telemetry:
    """The daemon's tracer, its exporter and the one helper that opens decision spans."""

    def __init__(
        self,
        provider: TracerProvider,
        processor: SpanProcessor,
        exporter_kind: ExporterKind,
        span_file: Path | None,
        span_writer: JsonlSpanExporter | None = None,
    ) -> None:
        self.provider = provider
        self.processor = processor  # the provider's one processor (close_spans feeds it)
        self.exporter_kind: ExporterKind = exporter_kind
        self.span_file = span_file
        # The span file's exporter, when close_spans writes its lines itself.
        self.span_writer = span_writer
        self.tracer = provider.get_tracer("selfheal")

    @contextmanager
    def decision_span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        *,
        context: Context | None = None,
    ) -> Iterator[Span]:
        """Open a span for one decision; an exception marks it ERROR and propagates."""
        with self.tracer.start_as_current_span(
            name,
            context=context,
            attributes=prefixed_attributes(attributes),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                message = redact_text(f"{type(exc).__name__}: {exc}")
                stack = "".join(traceback.format_exception(exc))
                # Override the SDK's raw message/stacktrace: they may carry secrets.
                span.record_exception(
                    exc,
                    attributes={
                        "exception.message": redact_text(str(exc)),
                        "exception.stacktrace": redact_text(stack),
                    },
                    escaped=True,
                )
                span.set_status(Status(StatusCode.ERROR, message))
                raise

    def open_span(self, name: str, *, traceparent: str | None, start_ns: int) -> OpenSpan:
        """Start a decision span whose ids are fixed now; `close_spans` records it.

        The batch router opens hundreds of spans per batch. These skip the SDK's live
        span (its lock, attribute cleaning and processor start hook) and are handed to
        the same span processor as finished spans, under the provider's sampling rule
        (ParentBased(ALWAYS_ON): a span follows its parent's sampled flag).
        """
        parent = _parent_traceparent(traceparent)
        if parent is None:
            trace_hex, flags = f"{_nonzero_bits(128):032x}", int(_ROOT_FLAGS)
        else:
            trace_hex, flags = parent[3:35], int(parent[53:], 16) & _INHERITED_FLAGS
        this = f"00-{trace_hex}-{_nonzero_bits(64):016x}-{flags:02x}"
        return OpenSpan(name, this, parent, start_ns)

    def close_spans(self, spans: Iterable[tuple[OpenSpan, Mapping[str, Any]]], end_ns: int) -> None:
        """End the spans at `end_ns` with their attributes and hand them to the exporter.

        Like the SDK's spans they are dropped when the SDK is disabled
        (OTEL_SDK_DISABLED) or after shutdown; span limits do not apply (a decision
        has a dozen attributes, all short primitives). With the span file the lines
        are rendered here and written by the exporter's own thread, bypassing the
        SDK's span objects and processor; other exporters get the processor.
        """
        if not isinstance(self.tracer, SdkTracer):
            return
        resource = self.provider.resource
        writer = self.span_writer
        if writer is not None:
            if writer.closed:
                return
            opened, recorded = _record_batch(spans)
            try:
                lines = decision_lines(opened, recorded, end_ns, resource)
            except Exception:  # as in the exporter's thread: logged, never the router's
                log.exception("could not render %d span(s)", len(opened))
                return
            writer.write_lines(lines)
            return
        on_end = self.processor.on_end
        for span, attributes in spans:
            if span.sampled:
                on_end(recorded_span(span, attributes, end_ns, resource))

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """Export every finished span now; False if the deadline passed first."""
        deadline = time.monotonic() + timeout_ms / 1000
        flushed = True
        if self.span_writer is not None:
            flushed = self.span_writer.force_flush(timeout_ms)
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        return self.provider.force_flush(remaining_ms) and flushed

    def shutdown(self) -> None:
        """Flush and stop the exporter (and the span file's writer); later spans are dropped."""
        self.provider.shutdown()  # shuts the exporter (and so the writer) down too
        if self.span_writer is not None and not self.span_writer.closed:
            self.span_writer.shutdown()  # a provider without it


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
    writer: JsonlSpanExporter | None = None
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporter, kind, file = _otlp_exporter(env), "otlp", None
    else:
        exporter = writer = JsonlSpanExporter(span_file, max_bytes=max_bytes, backups=backups)
        kind, file = "jsonl", span_file
    # Every decision is kept: sampling would break "one incident is one trace".
    provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_ON))
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=BATCH_SCHEDULE_DELAY_MS)
    provider.add_span_processor(processor)
    if writer is not None:
        writer.write_earlier = processor.force_flush
    return Telemetry(provider, processor, kind, file, writer)


def current_traceparent(span: Span | None = None) -> str | None:
    """Return the W3C traceparent of `span` (default: the current span), or None."""
    span = span if span is not None else trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


class OpenSpan(msgspec.Struct, frozen=True):
    """A decision span opened by Telemetry.open_span and not recorded yet.

    A frozen msgspec Struct, not a frozen dataclass: one is opened per event routed,
    and a frozen dataclass sets each field through object.__setattr__.

    It is kept as its W3C traceparent and its parent's, both canonical
    (00-<32 hex>-<16 hex>-<2 hex>): the span file is written from them, and the
    SDK's span contexts are only built when an exporter needs them.
    """

    name: str
    # This span's traceparent: what the events sent inside it carry.
    traceparent: str
    # The remote parent's traceparent; None for a root span.
    parent_traceparent: str | None
    start_ns: int

    @property
    def sampled(self) -> bool:
        """The sampled flag of this span (inherited from its parent)."""
        return bool(int(self.traceparent[53:], 16) & TraceFlags.SAMPLED)

    @property
    def context(self) -> SpanContext:
        """This span's SpanContext."""
        return _span_context(self.traceparent, remote=False)

    @property
    def parent(self) -> SpanContext | None:
        """The remote parent's SpanContext, or None for a root span."""
        tp = self.parent_traceparent
        return None if tp is None else _span_context(tp, remote=True)


def _span_context(tp: str, *, remote: bool) -> SpanContext:
    return SpanContext(
        int(tp[3:35], 16),
        int(tp[36:52], 16),
        is_remote=remote,
        trace_flags=TraceFlags(int(tp[53:], 16)),
    )


def _nonzero_bits(bits: int) -> int:
    # As the SDK's RandomIdGenerator: random ids, never the invalid all-zero one.
    while not (value := random.getrandbits(bits)):
        pass
    return value


_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def _parent_traceparent(tp: str | None) -> str | None:
    """The canonical traceparent of the remote parent named by `tp`; None if missing or invalid."""
    if not tp:
        return None
    match = _TRACEPARENT.fullmatch(tp)
    if match is not None:
        return tp if match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN else None
    # Another form the W3C propagator accepts (a later version, say): its reading, canonical.
    context = context_from_traceparent(tp)
    if context is None:
        return None
    parent = trace.get_current_span(context).get_span_context()
    return f"00-{parent.trace_id:032x}-{parent.span_id:016x}-{parent.trace_flags:02x}"


def context_from_traceparent(tp: str | None) -> Context | None:
    """Return a Context whose parent is the span named by `tp`; None if missing or invalid."""
    if not tp:
        return None
    # Extract into an empty Context so an invalid header cannot fall back to the current span.
    ctx = _PROPAGATOR.extract({"traceparent": tp}, context=Context())
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx
