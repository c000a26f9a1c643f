"""Failure classification: errno, exception names, message patterns, severity."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from selfheal.core.classify import (
    _MESSAGE_RULES,
    HARD_CLASSES,
    SEVERITY,
    UNKNOWN,
    Classification,
    FailureClass,
    _by_message,
    classify,
    classify_item,
)
from selfheal.core.contracts import Evidence

T = FailureClass.TRANSIENT_TRANSPORT
I = FailureClass.TRANSIENT_INFRA  # noqa: E741 - short names keep the tables readable
R = FailureClass.RESOURCE_EXHAUSTED
A = FailureClass.AUTH
C = FailureClass.CONFIG
G = FailureClass.INTEGRITY
U = FailureClass.UNKNOWN

ERRNOS = [
    ("ENOSPC", R),
    ("EDQUOT", R),
    ("EACCES", A),
    ("EPERM", A),
    ("ETIMEDOUT", T),
    ("ECONNREFUSED", T),
    ("ECONNRESET", T),
    ("ECONNABORTED", T),
    ("EHOSTUNREACH", T),
    ("ENETUNREACH", T),
    ("EPIPE", T),
    ("EAGAIN", T),
    ("EIO", I),
    ("ESTALE", I),
    ("ENOTCONN", I),
    ("ENODEV", I),
    ("ENAMETOOLONG", C),
    ("EINVAL", C),
]


def test_hard_classes() -> None:
    assert frozenset({R, A, C}) == HARD_CLASSES


@pytest.mark.parametrize(("name", "expected"), ERRNOS)
def test_errno_by_name_and_number(name: str, expected: FailureClass) -> None:
    wanted = Classification(expected, f"errno {name}")
    assert classify([Evidence(errno=name)]) == wanted
    assert classify([Evidence(errno=name.lower())]) == wanted
    assert classify([Evidence(errno=getattr(errno, name))]) == wanted
    assert classify([Evidence(errno=str(getattr(errno, name)))]) == wanted


def test_errno_alias_resolves_to_the_listed_name() -> None:
    assert classify([Evidence(errno="EWOULDBLOCK")]) == Classification(T, "errno EAGAIN")


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (Evidence(errno="ENOENT", kind="mount"), Classification(I, "errno ENOENT on a mount")),
        (Evidence(errno=errno.ENOENT, kind="MOUNT"), Classification(I, "errno ENOENT on a mount")),
        (Evidence(errno="ENOENT", kind="file"), UNKNOWN),
        (Evidence(errno="ENOENT"), UNKNOWN),
        (Evidence(errno="EBOGUS"), UNKNOWN),
        (Evidence(errno=99_999), UNKNOWN),
    ],
)
def test_enoent_counts_only_on_a_mount(evidence: Evidence, expected: Classification) -> None:
    assert classify([evidence]) == expected


@pytest.mark.parametrize(
    ("exception", "expected"),
    [
        ("asyncssh.misc.HostKeyNotVerifiable", A),
        ("asyncssh.misc.PermissionDenied", A),
        ("PermissionError", A),
        ("asyncssh.misc.ConnectionLost", T),
        ("asyncssh.sftp.SFTPConnectionLost", T),
        ("asyncssh.misc.DisconnectError", T),
        ("TimeoutError", T),
        ("asyncio.exceptions.TimeoutError", T),
        ("socket.timeout", T),
        ("ConnectionRefusedError", T),
        ("ConnectionResetError", T),
        ("ConnectionAbortedError", T),
        ("BrokenPipeError", T),
        ("ConnectionError", T),
        ("socket.gaierror", T),
        ("httpx.ConnectError", T),
        ("httpx.ConnectTimeout", T),
        ("httpx.ReadTimeout", T),
        ("selfheal.backup.ChecksumMismatch", G),
        ("IntegrityError", G),
        ("selfheal.errors.ConfigError", C),
        ("pydantic_core._pydantic_core.ValidationError", C),
        ("redis.exceptions.BusyLoadingError", I),
        ("redis.exceptions.ConnectionError", I),
        ("redis.exceptions.TimeoutError", I),
        ("OSError", U),
        ("ValueError", U),
    ],
)
def test_exception_names(exception: str, expected: FailureClass) -> None:
    found = classify([Evidence(exception=exception)])
    assert found.failure_class == expected
    if expected != U:
        assert found.reason == f"exception {exception}"


def test_exception_with_message_text_uses_the_type_only() -> None:
    found = classify([Evidence(exception="builtins.TimeoutError: no space left on device")])
    assert found == Classification(T, "exception builtins.TimeoutError")


@pytest.mark.parametrize(
    ("message", "expected", "shown"),
    [
        ("connect: Connection timed out", T, "timed out"),
        ("read timeout after 10s", T, "timeout"),
        ("lost connection", T, "connection"),
        ("connect to host nas: No route to host", T, "no route to host"),
        ("Network is unreachable", T, "network is unreachable"),
        ("Error: ECONNREFUSED 127.0.0.1:6379", T, "ECONN*"),
        ("ssh: Could not resolve hostname nas", T, "ssh:"),
        ("write: Resource temporarily unavailable", T, "resource temporarily unavailable"),
        ("Temporary failure in name resolution", T, "temporary failure"),
        ("cp: Input/output error", I, "input/output error"),
        ("open: Stale file handle", I, "stale file handle"),
        ("Transport endpoint is not connected", I, "transport endpoint is not connected"),
        ("Typesense server is unavailable", I, "server is unavailable"),
        ("scp: /volume1/x: Permission denied", A, "permission denied"),
        ("Host key verification failed.", A, "host key verification failed"),
        ("WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!", A, None),
        ("write failed: No space left on device", R, "no space left on device"),
        ("Disk quota exceeded", R, "disk quota exceeded"),
        ("Typesense snapshot failed (500)", C, "snapshot failed (500)"),
        ("no snapshot files staged in /tmp/ts", C, "no snapshot files staged"),
        ("artifact checksum mismatch", G, "checksum mismatch"),
        ("SHA256 MISMATCH after copy", G, "sha256 mismatch"),
        ("something odd happened", U, None),
    ],
)
def test_message_patterns(message: str, expected: FailureClass, shown: str | None) -> None:
    found = classify([Evidence(message=message)])
    assert found.failure_class == expected
    if shown is not None:
        assert found.reason == f"message matches {shown!r}"
    # snippets are read the same way as messages
    assert classify([Evidence(snippet=message)]).failure_class == expected


NO_SPACE = Classification(R, "message matches 'no space left on device'")


@pytest.mark.parametrize(
    "item",
    [
        {"kind": "error", "detail": "OSError: [Errno 28] No space left on device"},
        {"kind": "log", "stderr": "rsync: write failed: No space left on device (28)"},
        {"log": ["copy started", "write: No space left on device"]},
        {"output": {"step": "copy", "error": {"text": "No space left on device"}}},
        # A type name the table does not know leaves its text to be read.
        {"exception": "OSError: [Errno 28] No space left on device"},
    ],
    ids=["detail", "stderr", "a list", "nested objects", "exception text"],
)
def test_every_text_an_item_holds_is_read(item: dict[str, Any]) -> None:
    evidence = Evidence.model_validate(item)
    assert classify_item(evidence) == NO_SPACE
    assert classify([Evidence(message="connection reset"), evidence]) == NO_SPACE


def test_the_most_severe_text_of_an_item_wins_and_the_first_on_a_tie() -> None:
    item = Evidence.model_validate(
        {"message": "timed out", "stderr": ["stale file handle", "Permission denied"]}
    )
    assert classify_item(item) == Classification(A, "message matches 'permission denied'")
    item = Evidence.model_validate({"detail": "no route to host", "log": "timed out"})
    assert classify_item(item) == Classification(T, "message matches 'no route to host'")


def test_labels_and_names_are_not_read_as_descriptions() -> None:
    item = Evidence(kind="timeout", path="/mnt/permission denied", key="connection", event_id="x")
    assert classify_item(item) is None


def test_most_severe_pattern_in_one_message_wins() -> None:
    found = classify([Evidence(message="ssh: connect to host nas: Permission denied")])
    assert found == Classification(A, "message matches 'permission denied'")


def test_errno_beats_exception_beats_message_within_an_item() -> None:
    item = Evidence(errno="ETIMEDOUT", exception="ConfigError", message="permission denied")
    assert classify_item(item) == Classification(T, "errno ETIMEDOUT")
    item = Evidence(exception="ConfigError", message="permission denied")
    assert classify_item(item) == Classification(C, "exception ConfigError")
    # an errno that says nothing lets the next source decide
    item = Evidence(errno="EBOGUS", exception="TimeoutError")
    assert classify_item(item) == Classification(T, "exception TimeoutError")


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (["timed out", "stale file handle"], I),
        (["stale file handle", "checksum mismatch"], G),
        (["checksum mismatch", "invalid: snapshot failed (500)"], C),
        (["snapshot failed (500)", "no space left on device"], R),
        (["no space left on device", "permission denied"], A),
        (["permission denied", "timed out", "no space left on device"], A),
        (["nothing", "timed out"], T),
        (["nothing", "nothing either"], U),
    ],
)
def test_most_severe_item_wins(messages: list[str], expected: FailureClass) -> None:
    evidence = [Evidence(message=m) for m in messages]
    assert classify(evidence).failure_class == expected
    assert classify(list(reversed(evidence))).failure_class == expected


def test_tie_keeps_the_first_item() -> None:
    found = classify([Evidence(message="no route to host"), Evidence(errno="ETIMEDOUT")])
    assert found == Classification(T, "message matches 'no route to host'")


def test_summary_is_only_a_last_resort() -> None:
    assert classify([], summary="copy timed out") == Classification(
        T, "summary message matches 'timed out'"
    )
    evidence = [Evidence(message="Input/output error")]
    assert classify(evidence, summary="permission denied").failure_class == I
    assert classify([Evidence(kind="log")], summary="nothing known") == UNKNOWN


def test_empty_evidence_is_unknown() -> None:
    assert classify([]) == UNKNOWN
    assert UNKNOWN.failure_class == U


POOL = [
    Evidence(errno="ENOSPC"),
    Evidence(errno="EIO"),
    Evidence(errno="ETIMEDOUT"),
    Evidence(exception="HostKeyNotVerifiable"),
    Evidence(exception="ChecksumMismatch"),
    Evidence(exception="ConfigError"),
    Evidence(message="no route to host"),
    Evidence(message="stale file handle"),
    Evidence(message="all fine really"),
    Evidence(kind="log"),
]


@given(st.lists(st.sampled_from(POOL), max_size=6))
def test_result_is_the_most_severe_item(evidence: list[Evidence]) -> None:
    classes = [c.failure_class for c in map(classify_item, evidence) if c is not None]
    expected = max(classes, key=SEVERITY.__getitem__, default=U)
    assert classify(evidence).failure_class == expected


@given(st.text(max_size=200), st.one_of(st.none(), st.integers(0, 20_000), st.text(max_size=12)))
@example(message="", code="\u00b2")  # a digit to str.isdigit, not a number to int()
@example(message="", code=" \u0662\u0668 ")  # Arabic-Indic 28: a number to int()
def test_any_evidence_classifies(message: str, code: int | str | None) -> None:
    if isinstance(code, str) and not code:
        code = None
    found = classify([Evidence(message=message, errno=code)])
    assert found.failure_class in SEVERITY
    assert found.reason


PHRASES = [
    "connection reset",
    "timed out",
    "permission denied",
    "no space left on device",
    "sha256 mismatch",
    "stale file handle",
    "ssh: connect",
    "Host key verification failed",
    "nothing to see",
]


def _every_match_ranked(texts: list[str | None]) -> Classification | None:
    """The classification by ranking every match of every text at once (first wins a tie)."""
    best: Classification | None = None
    for text in texts:
        for pattern, failure_class, label in _MESSAGE_RULES:
            if text and pattern.search(text):
                found = Classification(
                    failure_class, f"message matches {label or pattern.pattern!r}"
                )
                if best is None or SEVERITY[found.failure_class] > SEVERITY[best.failure_class]:
                    best = found
    return best


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(PHRASES), max_size=4).map("; ".join),
            st.lists(st.sampled_from(PHRASES), min_size=1, max_size=3).map(
                lambda parts: "x" * 600 + "; ".join(parts)  # longer than the cached texts
            ),
        ),
        max_size=4,
    )
)
def test_per_text_ranking_matches_ranking_every_match(texts: list[str | None]) -> None:
    assert _by_message(texts) == _every_match_ranked(texts)
    assert _by_message(texts) == _every_match_ranked(texts)  # again, from the cache
