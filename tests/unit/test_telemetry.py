"""Spans reach the JSONL file (or an OTLP/HTTP endpoint) through the SDK: prefixed,
redacted by one processor, linked into traces, rotated."""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, Status, StatusCode, TraceFlags, TraceState

from selfheal.redact import MASK, register_secrets
from selfheal.spanfile import JsonlSpanExporter, read_spans, resource_object, span_line
from selfheal.telemetry import (
    Telemetry,
    context_from_traceparent,
    current_traceparent,
    setup_telemetry,
)

FLUSH_MS = 5000
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"

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


def ids(span: dict[str, Any]) -> tuple[str, str, str | None]:
    """Trace id, span id and parent span id of a span-file line, as a traceparent has them."""
    parent = span["parent_id"]
    return (
        span["context"]["trace_id"].removeprefix("0x"),
        span["context"]["span_id"].removeprefix("0x"),
        None if parent is None else parent.removeprefix("0x"),
    )


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
    (span,) = flushed_spans(telemetry)
    assert span["name"] == "healing.decide"
    assert span["attributes"] == {
        "selfheal.incident_id": "inc-1",
        "selfheal.attempt": 3,
        "selfheal.delay_s": 1.5,
        "selfheal.action": "retry",
        "selfheal.api_key": MASK,
        "selfheal.target": f"redis://:{MASK}@nas:6379",
        "selfheal.detail": json.dumps({"bytes": 10, "token": MASK}, sort_keys=True),
    }
    trace_id, span_id, parent = ids(span)
    assert len(trace_id) == 32 and int(trace_id, 16)
    assert len(span_id) == 16 and int(span_id, 16)
    assert parent is None
    assert span["start_time"].endswith("Z") and span["start_time"] <= span["end_time"]
    assert span["status"] == {"status_code": "UNSET"}
    assert span["kind"] == "SpanKind.INTERNAL"
    resource = span["resource"]["attributes"]
    assert resource["service.name"] == "selfheal-test"
    assert resource["service.version"] == "9.9.9"
    assert resource["host.name"] == socket.gethostname()
    assert resource["process.pid"] == os.getpid()


def test_span_file_and_directory_are_private(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("x"):
        pass
    flushed_spans(telemetry)
    assert telemetry.span_file is not None
    assert stat.S_IMODE(telemetry.span_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(telemetry.span_file.parent.stat().st_mode) == 0o700


def test_exception_marks_span_error_redacted_and_propagates(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with (
        pytest.raises(ConnectionError, match="hunter2"),
        telemetry.decision_span("transfer", {"mode": "ssh"}),
    ):
        raise ConnectionError("cannot reach redis://:hunter2@nas")

    (span,) = flushed_spans(telemetry)
    assert span["status"] == {
        "status_code": "ERROR",
        "description": f"ConnectionError: cannot reach redis://:{MASK}@nas",
    }
    (event,) = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ConnectionError"
    assert event["attributes"]["exception.message"] == f"cannot reach redis://:{MASK}@nas"
    assert "hunter2" not in json.dumps(span)


def test_a_cancellation_is_not_an_error(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with pytest.raises(KeyboardInterrupt), telemetry.decision_span("stopped"):
        raise KeyboardInterrupt
    (span,) = flushed_spans(telemetry)
    assert span["status"] == {"status_code": "UNSET"} and span["events"] == []


def test_nested_decision_spans_are_parent_and_child(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    with telemetry.decision_span("outer"), telemetry.decision_span("inner"):
        pass
    spans = {s["name"]: ids(s) for s in flushed_spans(telemetry)}
    assert spans["inner"][0] == spans["outer"][0]
    assert spans["inner"][2] == spans["outer"][1]


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

    spans = {s["name"]: ids(s) for s in flushed_spans(telemetry)}
    assert carried.split("-")[1:3] == list(spans["incident.open"][:2])
    assert spans["incident.retry"][0] == spans["incident.open"][0]
    assert spans["incident.retry"][2] == spans["incident.open"][1]


def test_started_spans_keep_their_times_continue_the_trace_and_are_redacted(
    make_telemetry: MakeTelemetry,
) -> None:
    telemetry = make_telemetry()
    register_secrets(["Zq9-registered-value"])
    with telemetry.decision_span("incident.open"):
        carried = current_traceparent()
        # Without a traceparent a started span begins its own trace, whatever is current.
        root = telemetry.start_span(
            "selfheal.route.decide", traceparent=None, start_ns=2_000_000_000
        )
    root.set_attributes(
        {
            "selfheal.action": "escalate",
            "selfheal.api_key": "k-123",
            "selfheal.reason": "copy to https://backup:hunter2@nas/x failed",
            "selfheal.note": "saw Zq9-registered-value",
        }
    )
    assert carried is not None
    child = telemetry.start_span(
        "selfheal.route.decide", traceparent=carried, start_ns=1_000_000_000
    )
    child.set_attributes({"selfheal.action": "retry", "selfheal.attempt": 2})
    # Events sent inside a span carry its traceparent before the span ends.
    child_tp = current_traceparent(child)
    assert child_tp is not None and child_tp.split("-")[1] == carried.split("-")[1]
    child.end(end_time=1_500_000_000)
    root.end(end_time=2_500_000_000)

    spans = [s for s in flushed_spans(telemetry) if s["name"] == "selfheal.route.decide"]
    by_action = {s["attributes"]["selfheal.action"]: s for s in spans}
    retry, escalate = by_action["retry"], by_action["escalate"]
    assert ids(retry) == (carried.split("-")[1], child_tp.split("-")[2], carried.split("-")[2])
    assert retry["attributes"] == {"selfheal.action": "retry", "selfheal.attempt": 2}
    assert (retry["start_time"], retry["end_time"]) == (
        "1970-01-01T00:00:01.000000Z",
        "1970-01-01T00:00:01.500000Z",
    )
    assert ids(escalate)[2] is None and ids(escalate)[0] != ids(retry)[0]
    assert escalate["attributes"] == {
        "selfheal.action": "escalate",
        "selfheal.api_key": MASK,
        "selfheal.reason": f"copy to https://backup:{MASK}@nas/x failed",
        "selfheal.note": f"saw {MASK}",
    }


def test_a_span_never_ended_is_never_written(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    telemetry.start_span("selfheal.route.decide", traceparent=None, start_ns=1)
    ended = telemetry.start_span("selfheal.route.decide", traceparent=None, start_ns=1)
    ended.end(end_time=2)
    assert [ids(s)[1] for s in flushed_spans(telemetry)] == [
        f"{ended.get_span_context().span_id:016x}"
    ]


@pytest.mark.parametrize(
    ("given", "parent"),
    [
        (f"00-{TRACE}-{PARENT}-01", PARENT),
        # A later version with more fields is read as version 00.
        (f"cc-{TRACE}-{PARENT}-01-what-comes-next", PARENT),
        (f"cc-{TRACE.upper()}-{PARENT}-01", None),  # upper-case hex is refused
        (f"00-{'0' * 32}-{PARENT}-01", None),  # all-zero ids name no span
        (f"00-{TRACE}-{'0' * 16}-01", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_started_span_parents(
    make_telemetry: MakeTelemetry, given: str, parent: str | None
) -> None:
    telemetry = make_telemetry()
    span = telemetry.start_span("selfheal.route.decide", traceparent=given, start_ns=1)
    span.end(end_time=2)
    ((trace_id, span_id, parent_id),) = [ids(s) for s in flushed_spans(telemetry)]
    assert parent_id == parent
    assert (trace_id == TRACE) == (parent is not None)
    traceparent = current_traceparent(span)
    assert traceparent is not None and traceparent.split("-")[1:3] == [trace_id, span_id]


def test_spans_under_an_unsampled_parent_are_not_written(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    unsampled = f"00-{TRACE}-{PARENT}-00"
    span = telemetry.start_span("selfheal.route.decide", traceparent=unsampled, start_ns=1)
    carried = current_traceparent(span)
    assert carried is not None and carried.startswith(f"00-{TRACE}-") and carried.endswith("-00")
    span.end(end_time=2)
    telemetry.start_span("selfheal.route.decide", traceparent=None, start_ns=3).end(end_time=4)
    assert len(flushed_spans(telemetry)) == 1


def test_nothing_is_written_when_the_sdk_is_disabled(
    make_telemetry: MakeTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry = make_telemetry()
    span = telemetry.start_span("selfheal.route.decide", traceparent=None, start_ns=1)
    assert current_traceparent(span) is None
    span.end(end_time=2)
    with telemetry.decision_span("selfheal.config.reload"):
        pass
    assert flushed_spans(telemetry) == []


def test_spans_after_shutdown_are_dropped(make_telemetry: MakeTelemetry) -> None:
    telemetry = make_telemetry()
    telemetry.start_span("before", traceparent=None, start_ns=1).end(end_time=2)
    telemetry.shutdown()  # writes what was queued
    assert telemetry.span_file is not None
    assert [s["name"] for s in read_spans(telemetry.span_file)] == ["before"]
    telemetry.start_span("after", traceparent=None, start_ns=3).end(end_time=4)
    with telemetry.decision_span("after"):
        pass
    telemetry.force_flush(FLUSH_MS)
    assert [s["name"] for s in read_spans(telemetry.span_file)] == ["before"]


@pytest.mark.parametrize("value", [None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"])
def test_invalid_traceparent_gives_no_context(value: str | None) -> None:
    assert context_from_traceparent(value) is None


RESOURCE = Resource.create({"service.name": "selfheal-test", "process.pid": 42})
texts = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates too
values = st.one_of(
    texts,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.integers(min_value=0, max_value=9), max_size=3).map(tuple),
)
attribute_sets = st.dictionaries(texts, values, max_size=4)
span_contexts = st.builds(
    SpanContext,
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    is_remote=st.booleans(),
    trace_flags=st.sampled_from([TraceFlags(0), TraceFlags(1)]),
    trace_state=st.sampled_from([TraceState(), TraceState([("vendor", "v1")])]),
)
times = st.integers(min_value=0, max_value=2**62)
spans = st.builds(
    ReadableSpan,
    name=texts,
    context=span_contexts,
    parent=st.none() | span_contexts,
    resource=st.just(RESOURCE),
    attributes=attribute_sets,
    events=st.lists(st.builds(Event, texts, attribute_sets, times), max_size=2),
    links=st.lists(st.builds(Link, span_contexts, attribute_sets), max_size=2),
    status=st.sampled_from(
        [Status(), Status(StatusCode.OK), Status(StatusCode.ERROR, "boom \u00e9")]
    ),
    start_time=times,
    end_time=times,
)


@settings(max_examples=300, deadline=None)
@given(span=spans)
def test_a_line_is_the_sdks_json_of_the_span(span: ReadableSpan) -> None:
    line = span_line(span, resource_object(span.resource))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(span.to_json(indent=None))


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


def test_the_span_file_rotates_under_the_sdk(make_telemetry: MakeTelemetry, tmp_path: Path) -> None:
    telemetry = make_telemetry(max_bytes=6000, backups=2)
    for index in range(80):
        with telemetry.decision_span("selfheal.sdk", {"n": index, "pad": "x" * 200}):
            pass
    assert telemetry.force_flush(FLUSH_MS)
    folder = tmp_path / "telemetry"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["spans.jsonl", "spans.jsonl.1", "spans.jsonl.2"]
    for name in files:
        raw = (folder / name).read_bytes()
        assert 0 < len(raw) <= 6000 and raw.endswith(b"\n")
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    newest = [s["attributes"]["selfheal.n"] for s in read_spans(folder / "spans.jsonl")]
    assert newest[-1] == 79


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

    received: list[tuple[str, str, bytes]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
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


def test_otlp_endpoint_receives_redacted_spans(
    make_telemetry: MakeTelemetry, collector: tuple[str, type[_CollectorHandler]]
) -> None:
    endpoint, handler = collector
    telemetry = make_telemetry(env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    assert telemetry.exporter_kind == "otlp"
    assert telemetry.span_file is None
    with telemetry.decision_span("healing.decide", {"attempt": 1, "url": "https://u:hunter2@x"}):
        pass
    assert telemetry.force_flush(FLUSH_MS)
    assert handler.arrived.wait(timeout=10)
    path, content_type, body = handler.received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    assert b"healing.decide" in body and b"https://u:***@x" in body
    assert b"hunter2" not in body


def test_missing_otlp_package_gives_install_hint(
    make_telemetry: MakeTelemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry makes the import itself fail, exactly as an uninstalled package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(RuntimeError, match=r"pip install 'selfheal\[otlp\]'"):
        make_telemetry(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
