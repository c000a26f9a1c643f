"""Decision spans written straight to the span file: the old lines, byte for byte, off-loop."""

from __future__ import annotations

import enum
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource

from selfheal import spanfile
from selfheal.redact import quick_redact_text, texts_to_redact
from selfheal.spanfile import (
    JsonlSpanExporter,
    RedactedSpan,
    decision_lines,
    read_spans,
    span_line,
)
from selfheal.telemetry import (
    OpenSpan,
    Telemetry,
    _record_batch,
    recorded_span,
    setup_telemetry,
)

FLUSH_MS = 5000
RESOURCE = Resource.create({"service.name": "selfheal-test", "process.pid": 42})
WRITER_THREAD = "selfheal-span-writer"


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def old_lines(
    spans: list[tuple[OpenSpan, dict[str, Any]]], end_ns: int, resource: Resource
) -> list[bytes]:
    """What close_spans wrote before: a RedactedSpan per sampled span, through span_line."""
    return [
        span_line(recorded_span(span, attributes, end_ns, resource))
        for span, attributes in spans
        if span.sampled
    ]


def fast_lines(
    spans: list[tuple[OpenSpan, dict[str, Any]]], end_ns: int, resource: Resource
) -> list[bytes]:
    return decision_lines(*_record_batch(spans), end_ns, resource)


def opened(
    name: str, trace_id: int, span_id: int, flags: int, parent: int | None, start_ns: int
) -> OpenSpan:
    """An OpenSpan as Telemetry.open_span builds it, with chosen ids."""
    traceparent = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    parent_tp = None if parent is None else f"00-{trace_id:032x}-{parent:016x}-00"
    return OpenSpan(name, traceparent, parent_tp, start_ns)


# Text that makes redaction do something, or that a quick test could get wrong.
FRAGMENTS = [
    "password=hunter2",
    "Password: hunter2",
    "api_key=sk-live-123",
    "X-Api-Key: 'abc'",
    "Bearer abc.def-ghi",
    "authorization: Basic dXNlcjpwYXNz",
    "https://backup:hunter2@nas/x",
    "redis://:s3cret@host:6379",
    "/bot123456:ABCdef_ghi-jkl",
    "123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQ",
    "token=***",
    "tokenCount=5",
    "max_tokens = 12",
    "cookie;=x",
    "KEY",
    "9:",
    "ms:",
    "01KB4Z7XKEYQ8M3V5N6P7R8S9T",
    "\u0130",  # lower() makes it two characters
    "\u017fecret=x",  # long s: the same letter as s only case-insensitively
    "\u212aey=1",  # Kelvin sign
    "\udcff",  # a lone surrogate, as os.fsdecode leaves undecodable bytes
    "\n",
    '"},{"',
    "naïve",
]
ANY_CHARACTER = st.characters(exclude_categories=())  # lone surrogates included
texts = st.one_of(
    st.text(ANY_CHARACTER, max_size=30),
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text(ANY_CHARACTER, max_size=8)), max_size=5
    ).map("".join),
)
plain_keys = st.sampled_from(
    ["selfheal.event_id", "selfheal.reason", "selfheal.rule", "max_tokens", "selfheal.advisor.x"]
)
keys = st.one_of(
    plain_keys,
    st.sampled_from(
        ["selfheal.api_key", "selfheal.password", "redisPassword", "Authorization", "bot_token"]
    ),
    st.text(ANY_CHARACTER, max_size=12),
)
plain_values = st.one_of(
    texts,
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.booleans(),
)
values = st.one_of(
    plain_values,
    st.none(),
    st.just(""),
    st.just(0),
    st.sampled_from([Colour.RED, Level.HIGH]),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.text(max_size=3)),
    st.builds(object),
)
# Plain keys with primitive values take the batch path; the rest the per-value one.
attribute_sets = st.one_of(
    st.dictionaries(plain_keys, plain_values, max_size=5),
    st.dictionaries(keys, values, max_size=12),
)
spans = st.builds(
    opened,
    name=st.one_of(st.just("selfheal.route.decide"), st.text(ANY_CHARACTER, max_size=20)),
    trace_id=st.integers(min_value=1, max_value=2**128 - 1),
    span_id=st.integers(min_value=1, max_value=2**64 - 1),
    flags=st.sampled_from([0, 1, 2, 3]),
    parent=st.one_of(st.none(), st.integers(min_value=1, max_value=2**64 - 1)),
    start_ns=st.integers(min_value=0, max_value=2**63 - 1),
)
batches = st.lists(st.tuples(spans, attribute_sets), max_size=6)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches, end_ns=st.integers(min_value=0, max_value=2**63 - 1))
def test_fast_lines_are_the_old_lines_byte_for_byte(
    batch: list[tuple[OpenSpan, dict[str, Any]]], end_ns: int
) -> None:
    before = [dict(attributes) for _, attributes in batch]
    assert fast_lines(batch, end_ns, RESOURCE) == old_lines(batch, end_ns, RESOURCE)
    # The caller's attributes are read, never redacted in place.
    for (_, attributes), copy in zip(batch, before, strict=True):
        assert list(attributes) == list(copy)
        assert all(attributes[key] is copy[key] for key in copy)


@pytest.mark.parametrize(
    "texts_in_order",
    [
        ["123456789:AAbbCCddEEffGGhhIIjjKKllMMnnOOppQQ"],  # the digit-colon hint alone
        ["\u0130\u0130 x", "plain", "password=hunter2"],  # a hint after text lower() grows
        ["\u0130" * 30, "password=hunter2", "y" * 40],
        ["na\u00efve", "\udcff", "Bearer abc", "01KB4Z7XKEYQ8M3V5N6P7R8S9T"],
        ["no secret", "still none"],
    ],
)
def test_batch_secret_test_finds_the_text_to_redact(texts_in_order: list[str]) -> None:
    batch = [
        (opened("selfheal.route.decide", 1, 2 + index, 1, None, 10), {"selfheal.reason": text})
        for index, text in enumerate(texts_in_order)
    ]
    lines = fast_lines(batch, 20, RESOURCE)
    assert lines == old_lines(batch, 20, RESOURCE)
    assert not any(b"hunter2" in line or b"AAbbCC" in line for line in lines)


@pytest.mark.parametrize("parent", [None, 0x1234])
def test_a_realistic_decision_line(parent: int | None) -> None:
    span = opened("selfheal.route.decide", 0xABC, 0xDEF, 1, parent, 1_772_000_000_123_456_789)
    attributes: dict[str, Any] = {
        "selfheal.event_id": "01KB4Z7XKEYQ8M3V5N6P7R8S9T",
        "selfheal.incident_id": "backup:nas-1",
        "selfheal.attempt": 2,
        "selfheal.action": "retry",
        "selfheal.delay_ms": 73421,
        "selfheal.failure_class": "transient_transport",
        "selfheal.reason": "retry 2 in 73421 ms: copy to https://backup:hunter2@nas/x failed",
        "selfheal.rule": "retry",
        "selfheal.route_event": "system/backup.retry.requested",
        "selfheal.status": "scheduled",
        "selfheal.api_key": "k-123",
    }
    end_ns = 1_772_000_001_000_000_000
    (line,) = fast_lines([(span, attributes)], end_ns, RESOURCE)
    assert [line] == old_lines([(span, attributes)], end_ns, RESOURCE)
    assert b"hunter2" not in line and b"k-123" not in line
    rendered = json.loads(line)
    assert rendered["parent_span_id"] == (None if parent is None else f"{parent:016x}")
    assert list(rendered) == [
        "name", "trace_id", "span_id", "parent_span_id", "start_time", "end_time",
        "duration_ms", "status", "kind", "attributes", "events", "resource",
    ]  # fmt: skip


def test_one_span_that_is_not_unicode_keeps_its_batch() -> None:
    good = opened("selfheal.route.decide", 1, 2, 1, None, 10)
    odd = opened("selfheal.route.decide", 1, 3, 1, None, 10)
    batch: list[tuple[OpenSpan, dict[str, Any]]] = [
        (good, {"a": "x"}),
        (odd, {"selfheal.field": "data.x\udcff"}),
        (good, {"b": 1}),
    ]
    lines = fast_lines(batch, 20, RESOURCE)
    assert lines == old_lines(batch, 20, RESOURCE)
    assert [json.loads(line)["attributes"] for line in lines] == [
        {"a": "x"},
        {"selfheal.field": "data.x\udcff"},
        {"b": 1},
    ]


def test_spans_that_cannot_be_rendered_are_logged_not_raised(
    made: list[Telemetry],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A resource that is not valid Unicode: its spans were never written, and still are not.
    monkeypatch.setattr("socket.gethostname", lambda: "nas\udcff")
    telemetry = make(made, tmp_path / "spans.jsonl")
    with caplog.at_level(logging.ERROR, logger="selfheal.telemetry"):
        close(telemetry, 2)  # never raises into the router
        assert telemetry.force_flush(FLUSH_MS)
    assert "could not render 2 span(s)" in caplog.text


@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=8), st.data())
def test_texts_to_redact_finds_every_text_redaction_changes(
    pieces: list[str], data: st.DataObject
) -> None:
    texts = ["".join(data.draw(st.permutations(pieces))) for _ in range(3)] + pieces
    suspects = texts_to_redact(texts)
    for text in texts:
        if text not in suspects:
            assert quick_redact_text(text) == text
    assert suspects <= set(texts)


def test_texts_to_redact_names_the_texts_with_a_hint() -> None:
    texts = ["retry 1 of 5", "password=x", "ms: 9:30", "plain", "Bearer abc", "na\u00efve key"]
    assert texts_to_redact(texts) == {"password=x", "ms: 9:30", "Bearer abc", "na\u00efve key"}
    assert texts_to_redact(["a", "b"]) == set()


# -- the span file and its writer thread ------------------------------------------------


@pytest.fixture
def made(tmp_path: Path) -> Iterator[list[Telemetry]]:
    telemetries: list[Telemetry] = []
    yield telemetries
    for telemetry in telemetries:
        telemetry.shutdown()


def make(made: list[Telemetry], path: Path, **options: Any) -> Telemetry:
    settings_: dict[str, Any] = {"max_bytes": 1 << 20, "backups": 2, "env": {}}
    settings_.update(options)
    telemetry = setup_telemetry(
        service_name="selfheal-test", service_version="9.9.9", span_file=path, **settings_
    )
    made.append(telemetry)
    return telemetry


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER_THREAD]


def close(telemetry: Telemetry, count: int, **attributes: Any) -> list[OpenSpan]:
    opened_spans = [
        telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=1_000 + i)
        for i in range(count)
    ]
    telemetry.close_spans(
        [(span, {"selfheal.n": i, **attributes}) for i, span in enumerate(opened_spans)],
        end_ns=9_000,
    )
    return opened_spans


def test_closed_spans_are_the_old_lines_in_the_file_after_force_flush(
    made: list[Telemetry], tmp_path: Path
) -> None:
    path = tmp_path / "telemetry" / "spans.jsonl"
    telemetry = make(made, path)
    assert telemetry.span_writer is not None
    batch = [
        (telemetry.open_span("selfheal.route.decide", traceparent=None, start_ns=5), attributes)
        for attributes in (
            {"selfheal.reason": "password=hunter2 in Bearer abc.def"},
            {"selfheal.api_key": "k", "selfheal.odd": "x\udcff", "skip": [1]},
            {"selfheal.attempt": 1, "selfheal.ratio": 0.25, "selfheal.ok": False},
        )
    ]
    telemetry.close_spans(batch, end_ns=7_000_000)
    assert telemetry.force_flush(FLUSH_MS)
    expected = old_lines(batch, 7_000_000, telemetry.provider.resource)
    assert path.read_bytes() == b"".join(expected)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_shutdown_writes_everything_stops_the_writer_and_drops_later_spans(
    made: list[Telemetry], tmp_path: Path
) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = make(made, path)
    for _ in range(20):
        close(telemetry, 50)
    assert len(writer_threads()) == 1
    telemetry.shutdown()
    assert len(read_spans(path)) == 1000
    assert writer_threads() == []
    close(telemetry, 5)
    telemetry.force_flush(FLUSH_MS)
    assert len(read_spans(path)) == 1000
    assert writer_threads() == []
    telemetry.shutdown()  # twice is harmless


def test_no_writer_thread_until_a_span_is_closed(made: list[Telemetry], tmp_path: Path) -> None:
    telemetry = make(made, tmp_path / "spans.jsonl")
    with telemetry.decision_span("selfheal.config.reload"):
        pass
    assert telemetry.force_flush(FLUSH_MS)
    assert writer_threads() == []
    assert [s["name"] for s in read_spans(tmp_path / "spans.jsonl")] == ["selfheal.config.reload"]


def test_unsampled_and_disabled_spans_are_not_written(
    made: list[Telemetry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = make(made, path)
    unsampled = "00-" + "a" * 32 + "-" + "b" * 16 + "-00"
    span = telemetry.open_span("selfheal.route.decide", traceparent=unsampled, start_ns=1)
    telemetry.close_spans([(span, {"selfheal.action": "retry"})], end_ns=2)
    assert telemetry.force_flush(FLUSH_MS)
    assert not path.exists()

    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    disabled = make(made, tmp_path / "disabled.jsonl")
    close(disabled, 3)
    assert disabled.force_flush(FLUSH_MS)
    assert not (tmp_path / "disabled.jsonl").exists()


def test_a_failed_write_is_logged_and_the_writer_lives_on(
    made: list[Telemetry], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "telemetry"
    blocker.write_text("not a directory")
    path = blocker / "spans.jsonl"
    telemetry = make(made, path)
    with caplog.at_level(logging.ERROR, logger="selfheal.telemetry"):
        close(telemetry, 3)  # never raises into the caller
        assert telemetry.force_flush(FLUSH_MS)
    assert "could not write 3 span(s)" in caplog.text
    blocker.unlink()
    close(telemetry, 4)
    assert telemetry.force_flush(FLUSH_MS)
    assert len(read_spans(path)) == 4
    assert len(writer_threads()) == 1


def test_sdk_spans_that_ended_first_are_written_first(
    made: list[Telemetry], tmp_path: Path
) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = make(made, path)
    for number in range(2):
        with telemetry.decision_span("selfheal.sdk", {"number": number}):
            pass  # waits in the SDK's processor (up to its schedule delay)
    close(telemetry, 3)  # the writer thread writes the SDK's queue first
    assert telemetry.force_flush(FLUSH_MS)
    names = [s["name"] for s in read_spans(path)]
    assert names == ["selfheal.sdk"] * 2 + ["selfheal.route.decide"] * 3


def test_a_failing_flush_of_earlier_spans_does_not_stop_the_writer(
    made: list[Telemetry], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = make(made, path)
    assert telemetry.span_writer is not None

    def broken() -> bool:
        raise RuntimeError("processor trouble")

    telemetry.span_writer.write_earlier = broken
    with caplog.at_level(logging.ERROR, logger="selfheal.telemetry"):
        close(telemetry, 3)
        assert telemetry.force_flush(FLUSH_MS)
    assert "processor trouble" in caplog.text
    assert len(read_spans(path)) == 3


@pytest.mark.parametrize("backups", [0, 2])
def test_both_sources_share_rotation_and_never_split_a_line(
    made: list[Telemetry], tmp_path: Path, backups: int
) -> None:
    path = tmp_path / "spans.jsonl"
    telemetry = make(made, path, max_bytes=6000, backups=backups)
    exporter = telemetry.span_writer
    assert exporter is not None
    padding = "x" * 200

    def sdk_spans() -> None:
        for index in range(60):
            with telemetry.decision_span("selfheal.sdk", {"n": index, "pad": padding}):
                pass
            if index % 10 == 0:
                telemetry.force_flush(FLUSH_MS)

    thread = threading.Thread(target=sdk_spans)
    thread.start()
    for _ in range(12):
        close(telemetry, 10, pad=padding)
    thread.join()
    assert telemetry.force_flush(FLUSH_MS)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["spans.jsonl"] + [f"spans.jsonl.{i}" for i in range(1, backups + 1)]
    for name in files:
        raw = (tmp_path / name).read_bytes()
        assert 0 < len(raw) <= 6000
        assert raw.endswith(b"\n")
        for line in raw.splitlines():
            assert json.loads(line)["name"] in {"selfheal.sdk", "selfheal.route.decide"}
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_writes_from_both_sources_are_serialised(tmp_path: Path) -> None:
    """The writer thread and export() hold one lock: their lines never interleave."""
    exporter = JsonlSpanExporter(tmp_path / "spans.jsonl", max_bytes=1 << 30, backups=0)
    span = opened("selfheal.route.decide", 1, 2, 1, None, 10)
    lines = decision_lines([span], [{"pad": "y" * 5000}], 20, RESOURCE)
    stop = threading.Event()

    def export_loop() -> None:
        while not stop.is_set():
            exporter.export([RedactedSpan("sdk", span.context, None, RESOURCE, {"p": "z" * 5000})])

    thread = threading.Thread(target=export_loop)
    thread.start()
    try:
        for _ in range(200):
            exporter.write_lines(lines * 5)
        assert exporter.force_flush(FLUSH_MS)
    finally:
        stop.set()
        thread.join()
        exporter.shutdown()
    written = (tmp_path / "spans.jsonl").read_bytes().splitlines()
    assert sum(1 for line in written if json.loads(line)["name"] == "selfheal.route.decide") == 1000


def test_lines_beyond_the_backlog_bound_are_dropped_not_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(spanfile, "MAX_PENDING_LINES", 10)
    exporter = JsonlSpanExporter(tmp_path / "spans.jsonl", max_bytes=1 << 20, backups=0)
    span = opened("selfheal.route.decide", 1, 2, 1, None, 10)
    lines = decision_lines([span], [{"n": 1}], 20, RESOURCE)
    try:
        with caplog.at_level(logging.WARNING, logger="selfheal.telemetry"):
            with exporter._lock:  # the disk is stuck: nothing gets written meanwhile
                for _ in range(25):
                    exporter.write_lines(lines * 2)
            assert exporter.force_flush(FLUSH_MS)
    finally:
        exporter.shutdown()
    assert len(read_spans(tmp_path / "spans.jsonl")) == 10
    assert "dropping spans" in caplog.text
    assert "40 span(s) dropped" in caplog.text


def test_a_forked_child_gets_its_own_writer(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonlSpanExporter(path, max_bytes=1 << 20, backups=0)
    span = opened("selfheal.route.decide", 1, 2, 1, None, 10)
    exporter.write_lines(decision_lines([span], [{"who": "parent"}], 20, RESOURCE))
    assert exporter.force_flush(FLUSH_MS)
    pid = os.fork()
    if pid == 0:  # the child: write through a fresh writer thread, then leave at once
        ok = False
        try:
            exporter.write_lines(decision_lines([span], [{"who": "child"}], 20, RESOURCE))
            ok = exporter.force_flush(FLUSH_MS)
            exporter.shutdown()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    exporter.shutdown()
    assert sorted(s["attributes"]["who"] for s in read_spans(path)) == ["child", "parent"]
