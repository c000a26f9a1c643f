"""Decision spans reach the JSONL file (or an OTLP/HTTP endpoint) prefixed, redacted and linked."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, TraceFlags

from selfheal.spanfile import JsonlSpanExporter, RedactedSpan, read_spans, span_line, span_to_dict
from selfheal.telemetry import (
    Telemetry,
    context_from_traceparent,
    current_traceparent,
    setup_telemetry,
)

FLUSH_MS = 5000

MakeTelemetry = Callable[..., Telemetry]


@pytest.fixture
def make_telemetry(tmp_path: Path) -> Iterator[MakeTelemetry]:
    """Build Telemetry objects writing under tmp_path; shut every one down afterwards."""
    made: list[Telemetry] = []

    def make(**overrides: Any) -> Telemetry:
        options: dict[str, Any] = {
            "service_name": "selfheal-test",
            "service_version": "9.9.9",
            "span_file": tmp_path / "telemetry" / "spans.jsonl",
            "max_bytes": 1 << 20,
            "backups": 2,
            "env": {},
        }
        options.update(overrides)
        telemetry = setup_telemetry(**options)
        made.append(telemetry)
        return telemetry

    yield make
    for telemetry in made:
        telemetry.shutdown()


def flushed_spans(telemetry: Telemetry) -> list[dict[str, Any]]:
    assert telemetry.force_flush(FLUSH_MS)
    assert telemetry.span_file is not None
    return read_spans(telemetry.span_file)


def finished_spans(count: int, attribute_size: int = 0) -> list[ReadableSpan]:
    """Produce real finished SDK spans to hand straight to an exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for index in range(count):
        with tracer.start_as_current_span(f"span-{index}") as span:
            span.set_attribute("payload", "x" * attribute_size)
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_decision_span_lands_in_file_prefixed_and_redacted(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    attributes = {
        "incident_id": "inc-1",
        "attempt": 3,
        "delay_s": 1.5,
        "selfheal.action": "retry",
        "api_key": "sk-live-123",
        "target": "redis://:hunter2@nas:6379",
        "detail": {"token": "t0k", "bytes": 10},
        "skipped": None,
    }
    with telemetry.decision_span("healing.decide", attributes):
        pass

    assert telemetry.exporter_kind == "jsonl"
    assert telemetry.span_writer is not None
    (span,) = flushed_spans(telemetry)
    assert span["name"] == "healing.decide"
    assert span["attributes"] == {
        "selfheal.incident_id": "inc-1",
        "selfheal.attempt": 3,
        "selfheal.delay_s": 1.5,
        "selfheal.action": "retry",
        "selfheal.api_key": "***",
        "selfheal.target": "redis://:***@nas:6379",
        "selfheal.detail": json.dumps({"bytes": 10, "token": "***"}, sort_keys=True),
    }
    assert len(span["trace_id"]) == 32 and int(span["trace_id"], 16)
    assert len(span["span_id"]) == 16 and int(span["span_id"], 16)
    assert span["parent_span_id"] is None
    assert span["start_time"].endswith("Z") and len(span["start_time"]) == 27
    assert span["duration_ms"] >= 0
    assert span["status"] == {"code": "UNSET", "description": None}
    assert span["kind"] == "INTERNAL"
    assert span["resource"]["service.name"] == "selfheal-test"
    assert span["resource"]["service.version"] == "9.9.9"
    assert span["resource"]["host.name"] == socket.gethostname()
    assert span["resource"]["process.pid"] == os.getpid()


def test_span_file_and_directory_are_private(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("x"):
        pass
    flushed_spans(telemetry)
    assert telemetry.span_file is not None
    assert stat.S_IMODE(telemetry.span_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(telemetry.span_file.parent.stat().st_mode) == 0o700


def test_exception_marks_span_error_and_propagates(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with (
        pytest.raises(ConnectionError, match="hunter2"),
        telemetry.decision_span("transfer", {"mode": "ssh"}),
    ):
        raise ConnectionError("cannot reach redis://:hunter2@nas")

    (span,) = flushed_spans(telemetry)
    assert span["status"]["code"] == "ERROR"
    assert span["status"]["description"] == "ConnectionError: cannot reach redis://:***@nas"
    (event,) = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ConnectionError"
    assert "hunter2" not in json.dumps(span)


def test_nested_decision_spans_are_parent_and_child(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("outer"), telemetry.decision_span("inner"):
        pass
    spans = {s["name"]: s for s in flushed_spans(telemetry)}
    assert spans["inner"]["trace_id"] == spans["outer"]["trace_id"]
    assert spans["inner"]["parent_span_id"] == spans["outer"]["span_id"]


def test_traceparent_round_trip_links_child_to_parent_trace(
    make_telemetry: MakeTelemetry,
) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("incident.open") as parent:
        carried = current_traceparent()
        assert carried == current_traceparent(parent)
    assert carried is not None
    # Later (e.g. a retry read back from the queue) the event carries only the string.
    assert current_traceparent() is None
    with telemetry.decision_span("incident.retry", context=context_from_traceparent(carried)):
        pass

    spans = {s["name"]: s for s in flushed_spans(telemetry)}
    assert carried.split("-")[1] == spans["incident.open"]["trace_id"]
    assert spans["incident.retry"]["trace_id"] == spans["incident.open"]["trace_id"]
    assert spans["incident.retry"]["parent_span_id"] == spans["incident.open"]["span_id"]


def test_opened_spans_continue_the_parent_trace_and_carry_their_attributes(
    make_telemetry: MakeTelemetry,
) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("incident.open"):
        carried = current_traceparent()
    assert carried is not None
    child = telemetry.open_span("selfheal.route.decide", traceparent=carried, start_ns=1_000)
    root = telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=2_000)
    # Events sent inside a span carry its context before the span is recorded.
    assert child.traceparent.split("-")[1] == carried.split("-")[1]
    assert child.traceparent.split("-")[2] != carried.split("-")[2]
    assert child.traceparent.split("-")[3] == carried.split("-")[3]  # sampled, as the parent
    telemetry.close_spans(
        [(child, {"selfheal.action": "retry", "selfheal.attempt": 2, "bad": object()}),
         (root, {"selfheal.action": "escalate", "selfheal.api_key": "k-123",
                 "selfheal.reason": "copy to https://backup:hunter2@nas/x failed"})],
        end_ns=5_000_000,
    )  # fmt: skip

    spans = [s for s in flushed_spans(telemetry) if s["name"] == "selfheal.route.decide"]
    by_action = {s["attributes"]["selfheal.action"]: s for s in spans}
    assert set(by_action) == {"retry", "escalate"}
    retry = by_action["retry"]
    assert retry["trace_id"] == carried.split("-")[1]
    assert retry["parent_span_id"] == carried.split("-")[2]
    assert retry["span_id"] == child.traceparent.split("-")[2]
    assert retry["attributes"] == {"selfheal.action": "retry", "selfheal.attempt": 2}
    assert retry["duration_ms"] == round((5_000_000 - 1_000) / 1e6, 3)
    assert retry["resource"]["service.name"] == "selfheal-test"
    escalate = by_action["escalate"]
    assert escalate["parent_span_id"] is None
    assert escalate["trace_id"] != retry["trace_id"]
    # Secrets are masked once, when the span is recorded, whatever the exporter.
    assert "hunter2" not in json.dumps(escalate) and "k-123" not in json.dumps(escalate)
    assert escalate["attributes"]["selfheal.reason"].startswith("copy to https://backup:")


TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.mark.parametrize(
    ("given", "parent"),
    [
        (f"00-{TRACE}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01"),
        (f"00-{TRACE}-{PARENT}-00", f"00-{TRACE}-{PARENT}-00"),  # not sampled
        # A later version with more fields: the propagator reads it, we keep it canonical.
        (f"cc-{TRACE.upper()}-{PARENT}-01-what-comes-next", None),
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero ids name no span
        (f"00-{TRACE}-{'0' * 16}-01", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_opened_span_parents(make_telemetry: MakeTelemetry, given: str, parent: str | None) -> None:
    telemetry = make_telemetry()
    span = telemetry.open_span("selfheal.route.decide", traceparent=given, start_ns=1)
    if given.startswith("cc-"):
        # Upper-case hex is refused by the W3C propagator: the span starts a new trace.
        assert span.parent_traceparent is None
    assert span.parent_traceparent == parent
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", span.traceparent)
    if parent is None:
        assert span.parent is None and span.sampled
        assert span.traceparent[3:35] != TRACE
    else:
        assert span.parent == SpanContext(
            int(TRACE, 16),
            int(PARENT, 16),
            is_remote=True,
            trace_flags=TraceFlags(int(parent[-2:])),
        )
        assert span.traceparent[3:35] == TRACE and span.traceparent[-2:] == parent[-2:]
        assert span.sampled == parent.endswith("01")
    context = span.context
    assert f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}" == (
        span.traceparent
    )


def test_opened_span_reads_a_later_traceparent_version(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    later = f"cc-{TRACE}-{PARENT}-01-what-comes-next"
    span = telemetry.open_span("selfheal.route.decide", traceparent=later, start_ns=1)
    assert span.parent_traceparent == f"00-{TRACE}-{PARENT}-01"
    assert span.traceparent[3:35] == TRACE


@pytest.mark.parametrize("parent", [None, SpanContext(7, 8, is_remote=True)])
def test_recorded_span_line_is_the_span_as_json(parent: SpanContext | None) -> None:
    context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    span = RedactedSpan(
        "selfheal.route.décide",
        context,
        parent,
        Resource.create({"service.name": "selfheal-test"}),
        {"selfheal.reason": 'naïve "quoted"\n', "selfheal.attempt": 3, "selfheal.ok": True,
         "selfheal.ratio": 0.5},
        start_time=1_772_000_000_123_456_789,
        end_time=1_772_000_001_000_000_000,
    )  # fmt: skip
    line = span_line(span)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert json.loads(line) == span_to_dict(span)


def test_a_span_with_text_that_is_not_unicode_is_written_with_the_rest(tmp_path: Path) -> None:
    spans = finished_spans(3)
    odd = ReadableSpan(
        "selfheal.route.decide",
        spans[1].context,
        None,
        spans[1].resource,
        {"selfheal.field": "data.x\udcff"},  # a lone surrogate, e.g. from os.fsdecode
        start_time=spans[1].start_time,
        end_time=spans[1].end_time,
    )
    exporter = JsonlSpanExporter(tmp_path / "spans.jsonl", max_bytes=1 << 20, backups=1)
    assert exporter.export([spans[0], odd, spans[2]]) == SpanExportResult.SUCCESS
    written = read_spans(tmp_path / "spans.jsonl")
    assert [s["name"] for s in written] == ["span-0", "selfheal.route.decide", "span-2"]
    assert written[1]["attributes"]["selfheal.field"] == "data.x\udcff"


def in_memory_telemetry() -> tuple[Telemetry, InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    processor = SimpleSpanProcessor(memory)
    provider.add_span_processor(processor)
    return Telemetry(provider, processor, "jsonl", None), memory


def test_recorded_spans_carry_the_same_scope_as_the_sdk_spans() -> None:
    telemetry, memory = in_memory_telemetry()
    with telemetry.decision_span("selfheal.route.decide"):
        pass
    opened = telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=1)
    telemetry.close_spans([(opened, {"selfheal.action": "retry"})], end_ns=2)
    sdk_span, recorded = memory.get_finished_spans()
    assert recorded.instrumentation_scope == sdk_span.instrumentation_scope
    assert (recorded.kind, recorded.status.status_code) == (
        sdk_span.kind,
        sdk_span.status.status_code,
    )
    assert recorded.resource is sdk_span.resource


def test_recorded_spans_are_dropped_when_the_sdk_is_disabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry, memory = in_memory_telemetry()
    opened = telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=1)
    telemetry.close_spans([(opened, {"selfheal.action": "retry"})], end_ns=2)
    with telemetry.decision_span("selfheal.route.decide"):
        pass
    assert memory.get_finished_spans() == ()


def test_opened_span_under_an_unsampled_parent_is_not_recorded(
    make_telemetry: MakeTelemetry,
) -> None:
    telemetry = make_telemetry()
    unsampled = "00-" + "a" * 32 + "-" + "b" * 16 + "-00"
    span = telemetry.open_span("selfheal.route.decide", traceparent=unsampled, start_ns=1)
    assert span.traceparent.startswith("00-" + "a" * 32 + "-")
    assert span.traceparent.endswith("-00")  # the parent's choice travels on
    telemetry.close_spans([(span, {"selfheal.action": "retry"})], end_ns=2)
    recorded = telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=3)
    telemetry.close_spans([(recorded, {"selfheal.action": "pause"})], end_ns=4)
    actions = [s["attributes"].get("selfheal.action") for s in flushed_spans(telemetry)]
    assert actions == ["pause"]


@pytest.mark.parametrize("value", [None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_invalid_traceparent_gives_no_context(value: str | None) -> None:
    assert context_from_traceparent(value) is None


@pytest.mark.parametrize("backups", [0, 1, 3])
def test_rotation_keeps_at_most_backups_and_never_splits_lines(
    tmp_path: Path, backups: int
) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonlSpanExporter(path, max_bytes=4000, backups=backups)
    spans = finished_spans(60, attribute_size=300)
    for start in range(0, len(spans), 7):
        assert exporter.export(spans[start : start + 7]) is SpanExportResult.SUCCESS

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl"] + [f"spans.jsonl.{i}" for i in range(1, backups + 1)]
    names: list[str] = []
    for name in reversed(files):  # oldest backup first
        raw = (tmp_path / name).read_bytes()
        assert 0 < len(raw) <= 4000
        assert raw.endswith(b"\n")
        names += [json.loads(line)["name"] for line in raw.splitlines()]
    # What survives is the newest spans, contiguous and in order.
    assert names == [f"span-{i}" for i in range(60 - len(names), 60)]


def test_export_failure_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    exporter = JsonlSpanExporter(blocker / "spans.jsonl", max_bytes=1000, backups=1)
    assert exporter.export(finished_spans(1)) is SpanExportResult.FAILURE


def test_read_spans_tolerates_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text('{"name": "a"}\n{"name": "b"}\n{"name": "c", "attri')
    assert [s["name"] for s in read_spans(path)] == ["a", "b"]
    assert read_spans(tmp_path / "missing.jsonl") == []


class _CollectorHandler(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in that records what it was sent."""

    received: list[tuple[str, str, int]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), len(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


@pytest.fixture
def collector() -> Iterator[tuple[str, type[_CollectorHandler]]]:
    handler = type("Handler", (_CollectorHandler,), {"received": [], "arrived": threading.Event()})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_otlp_endpoint_receives_spans(
    make_telemetry: MakeTelemetry, collector: tuple[str, type[_CollectorHandler]]
) -> None:
    endpoint, handler = collector
    telemetry = make_telemetry(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert telemetry.exporter_kind == "otlp"
    assert telemetry.span_file is None
    assert telemetry.span_writer is None  # decision spans keep the SDK's processor route
    with telemetry.decision_span("healing.decide", {"attempt": 1}):
        pass
    assert telemetry.force_flush(FLUSH_MS)
    assert handler.arrived.wait(timeout=10)
    path, content_type, size = handler.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert size > 0


def test_missing_otlp_package_gives_install_hint(
    make_telemetry: MakeTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry makes the import itself fail, exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(RuntimeError, match=r"pip install 'selfheal\[otlp\]'"):
        make_telemetry(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
