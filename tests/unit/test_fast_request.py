"""decode_request answers only where the contract would accept, with the contract's values.

The contract (parse_request over the parsed JSON) is the reference. For any text:
either decode_request returns None (the caller then asks the contract), or the
contract accepts the same text and every field the router can read, and to_data,
is identical, types included. And ordinary requests must take the fast path, or
it saves nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfheal.core import fast_request
from selfheal.core.contracts import EVIDENCE_LIMIT, InvalidRequest, RequestView, parse_request
from selfheal.core.events import DATA_DEPTH_LIMIT, EVENT_DATA_LIMIT, compact_json
from selfheal.core.fast_request import decode_request
from tests.support.routing import request
from tests.support.values import typed

EVIDENCE_FIELDS = ("kind", "message", "errno", "exception", "path", "key", "eventId", "snippet")


def picture(view: RequestView) -> Any:
    """Everything the router reads of a request, as a strict comparable value."""
    policy = view.retry_policy
    route = view.route_to
    return typed(
        {
            "source_function": view.source_function,
            "target_component": view.target_component,
            "problem_summary": view.problem_summary,
            "attempt": view.attempt,
            "retry_policy": [
                policy.max_retries,
                policy.sleep_min_ms,
                policy.sleep_max_ms,
                policy.sleep_step_ms,
            ],
            "evidence": [
                [item.kind, item.message, item.errno, item.exception, item.snippet]
                for item in view.evidence
            ],
            # Fields no view names are compared through to_data.
            "deadline_at": None if view.deadline_at is None else view.deadline_at.isoformat(),
            "deadline_epoch": None if view.deadline_at is None else view.deadline_at.timestamp(),
            "fallback_action": view.fallback_action,
            "incident_id": view.incident_id,
            "domain": view.domain,
            "route_to": None if route is None else [route.event, dict(route.data)],
            "resolved_incident_id": view.resolved_incident_id,
            "to_data": view.to_data(),
        }
    )


def contract(text: str) -> Any:
    """The contract's reading of `text`: its picture, or "invalid"."""
    try:
        return picture(parse_request(json.loads(text)))
    except InvalidRequest:
        return "invalid"


def check(text: str) -> RequestView | None:
    """decode_request's answer, after checking it against the contract."""
    fast = decode_request(text)
    if fast is not None:
        assert contract(text) == picture(fast), text
    return fast


# -- ordinary requests take the fast path ------------------------------------------------


ORDINARY = [
    request(),
    request(evidence=["disk full", {"errno": 28, "path": "/mnt/nas"}]),
    request(evidence=[{"errno": "ENOSPC", "kind": "mount"}, {"exception": "OSError: x"}]),
    request(evidence=[]),
    request(routeTo={"event": "system/backup.retry.requested", "data": {"tier": 2, "x": [1]}}),
    request(context={"host": "nas-1", "nested": {"a": [1, 2.5, None, True]}}),
    request(owner="ops", fallbackAction="manual"),
    request(deadlineAt="2026-12-01T10:00:00Z"),
    request(deadlineAt="2026-12-01T10:00+05:30"),
    request(incidentId=None),
    request(domain="worker"),
    request(playbook={}),
    request(playbook={"skills": ["nas"], "links": ["https://x"], "runbook": None}),
    {k: v for k, v in request().items() if k != "incidentId"},
]


@pytest.mark.parametrize("data", ORDINARY)
def test_ordinary_requests_take_the_fast_path_with_the_contracts_values(data: dict[str, Any]):
    text = json.dumps(data)
    assert check(text) is not None
    assert contract(text) != "invalid"


# -- what the fast path must leave to the contract ---------------------------------------


def changed(**overrides: Any) -> str:
    return json.dumps(request(**overrides))


def with_policy(**overrides: Any) -> str:
    policy = {**request()["retryPolicy"], **overrides}
    return changed(retryPolicy=policy)


NOT_FAST = {
    # Python's `$` matches before a final newline; the contract's does not.
    "incident id with a final newline": changed(incidentId="a:b\n"),
    "domain with a final newline": changed(domain="backup\n"),
    "route event with a final newline": changed(
        routeTo={"event": "system/backup.retry.requested\n"}
    ),
    # Blank means every character is whitespace to str.strip, Unicode included.
    "blank source": changed(sourceFunction="   "),
    "no-break space summary": changed(problemSummary="\u00a0\u2003"),
    "information separator target": changed(targetComponent="\x1c\x1f"),
    "blank owner": changed(owner="\t"),
    "empty source": changed(sourceFunction=""),
    "source too long": changed(sourceFunction="x" * 257),
    "summary too long": changed(problemSummary="x" * 2001),
    # Numbers: strict ints, within limits.
    "bool attempt": changed(attempt=True),
    "float attempt": changed(attempt=1.0),
    "exponent attempt": changed(attempt=0).replace('"attempt": 0', '"attempt": 1e2'),
    "negative attempt": changed(attempt=-1),
    "huge attempt": changed(attempt=10**30),
    "too many retries": with_policy(maxRetries=101),
    "sleep max below min": with_policy(sleepMinMs=100, sleepMaxMs=99),
    "zero sleep min": with_policy(sleepMinMs=0),
    "string max retries": with_policy(maxRetries="3"),
    "extra policy key": with_policy(jitter=1),
    # Evidence and playbook keep extras in the contract; the fast path has no room.
    "evidence extra": changed(evidence=[{"message": "x", "host": "nas"}]),
    "evidence snake name": changed(evidence=[{"event_id": "e1"}]),
    "playbook extra": changed(playbook={"owner": "ops"}),
    "errno too big": changed(evidence=[{"errno": 100_000}]),
    "errno empty": changed(evidence=[{"errno": ""}]),
    "errno bool": changed(evidence=[{"errno": True}]),
    "errno float": changed(evidence=[{"errno": 28.0}]),
    "bare evidence too long": changed(evidence=["x" * 65_537]),
    "evidence not a list": changed(evidence="disk full"),
    "evidence number": changed(evidence=[5]),
    # Names: the contract also takes snake_case; unknown keys are refused.
    "snake case field as well": json.dumps({**request(), "source_function": "x"}),
    "snake case field only": json.dumps(
        {("source_function" if k == "sourceFunction" else k): v for k, v in request().items()}
    ),
    "nested past the contract's serialiser": changed(
        context={"x": json.loads("[" * 256 + "]" * 256)}
    ),
    "101 containers, shallow": changed(context={"x": [[] for _ in range(101)]}),
    "nested past the event data limit": changed(context={"x": json.loads("[" * 63 + "]" * 63)}),
    "too much evidence": changed(evidence=["x"] * (EVIDENCE_LIMIT + 1)),
    "unknown field": changed(severity="high"),
    "missing playbook": json.dumps({k: v for k, v in request().items() if k != "playbook"}),
    "null playbook": changed(playbook=None),
    "fallback action typo": changed(fallbackAction="page"),
    "route event without slash": changed(routeTo={"event": "retry"}),
    "route data not an object": changed(routeTo={"event": "a/b", "data": [1]}),
    # Deadlines: the contract's own parser decides, and refuses bare numbers.
    "deadline number": changed(deadlineAt=1_767_000_000),
    "deadline without zone": changed(deadlineAt="2026-12-01T10:00:00"),
    "deadline garbage": changed(deadlineAt="tomorrow"),
    # Text that is not valid Unicode.
    "lone surrogate": json.dumps(request()).replace('"redis"', '"\\ud800"'),
    "raw lone surrogate": json.dumps(request(), ensure_ascii=False).replace('"redis"', '"\udc00"'),
    "not an object": "[1, 2]",
}


@pytest.mark.parametrize("text", NOT_FAST.values(), ids=NOT_FAST.keys())
def test_what_the_fast_path_leaves_to_the_contract(text: str):
    assert check(text) is None


def test_some_of_what_the_fast_path_leaves_the_contract_accepts():
    # Falling back is about being sure, not about validity: these are valid requests.
    for name in (
        "snake case field only",
        "evidence extra",
        "playbook extra",
        "101 containers, shallow",
    ):
        assert contract(NOT_FAST[name]) != "invalid", name


def _at(path: str, value: Any) -> str:
    """A valid request with the field at `path` (dotted, [0] for the first item) set."""
    data = request(
        evidence=[{"message": "x"}],
        playbook={"skills": ["nas"]},
        routeTo={"event": "system/backup.retry.requested"},
    )
    *parents, last = path.replace("[0]", ".0").split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[last] = value
    return json.dumps(data)


def _route_event(n: int) -> str:
    return "system/" + "r" * (n - len("system/"))


# (field, value at the contract's limit, value just past it)
LIMITS = [
    ("sourceFunction", "x" * 256, "x" * 257),
    ("targetComponent", "x" * 256, "x" * 257),
    ("owner", "x" * 256, "x" * 257),
    ("problemSummary", "x" * 2000, "x" * 2001),
    ("evidence[0].message", "x" * 65_536, "x" * 65_537),
    ("evidence[0].snippet", "x" * 65_536, "x" * 65_537),
    ("evidence[0].kind", "x" * 4096, "x" * 4097),
    ("evidence[0].exception", "x" * 4096, "x" * 4097),
    ("evidence[0].path", "x" * 4096, "x" * 4097),
    ("evidence[0].key", "x" * 4096, "x" * 4097),
    ("evidence[0].eventId", "x" * 4096, "x" * 4097),
    ("evidence[0].errno", "E" * 64, "E" * 65),
    ("evidence[0].errno", 99_999, 100_000),
    ("playbook.skills", ["x" * 4096], ["x" * 4097]),
    ("playbook.runbook", "x" * 4096, "x" * 4097),
    ("incidentId", "i" * 128, "i" * 129),
    ("domain", "d" * 32, "d" * 33),
    ("routeTo.event", _route_event(200), _route_event(201)),
    ("attempt", 1_000_000_000, 1_000_000_001),
    ("retryPolicy.maxRetries", 100, 101),
    ("retryPolicy.sleepStepMs", 86_400_000, 86_400_001),
    ("retryPolicy.sleepMaxMs", 604_800_000, 604_800_001),
    ("evidence", ["x"] * EVIDENCE_LIMIT, ["x"] * (EVIDENCE_LIMIT + 1)),
    ("evidence", [{"errno": 28}] * EVIDENCE_LIMIT, [{"errno": 28}] * (EVIDENCE_LIMIT + 1)),
]


def nested(levels: int) -> Any:
    """Lists nested `levels` deep."""
    return json.loads("[" * levels + "]" * levels)


def test_the_nesting_limit_is_the_event_datas():
    # The request is level 1 and its context level 2: context may hold 62 levels more.
    at_limit = changed(context={"x": nested(DATA_DEPTH_LIMIT - 2)})
    past_limit = changed(context={"x": nested(DATA_DEPTH_LIMIT - 1)})
    assert contract(at_limit) != "invalid"
    assert check(past_limit) is None and contract(past_limit) == "invalid"
    with pytest.raises(InvalidRequest) as caught:
        parse_request(json.loads(past_limit))
    assert caught.value.field == "context"
    assert f"context: nested too deeply (max {DATA_DEPTH_LIMIT} levels)" in str(caught.value)


def _padded(pad: str, *, ascii_only: bool = True) -> str:
    return json.dumps(request(context={"pad": pad}), ensure_ascii=ascii_only)


def _size(text: str) -> int:
    """The size the contract measures: the JSON of what it would store."""
    return len(compact_json(parse_request(json.loads(text)).to_data()))


def test_the_size_limit_is_measured_as_the_contract_measures_it():
    room = EVENT_DATA_LIMIT - _size(_padded(""))
    at_limit, past_limit = _padded("x" * room), _padded("x" * (room + 1))
    assert _size(at_limit) == EVENT_DATA_LIMIT
    assert check(at_limit) is not None
    assert check(past_limit) is None and contract(past_limit) == "invalid"
    with pytest.raises(InvalidRequest, match=f"more than the {EVENT_DATA_LIMIT} allowed"):
        parse_request(json.loads(past_limit))
    # Short text that the stored JSON makes long: each character is a 12-character escape.
    astral = _padded("\U0001f600" * (room // 12 + 1), ascii_only=False)
    assert check(astral) is None and contract(astral) == "invalid"


def test_text_the_fast_path_does_not_measure_is_surely_within_the_size_limit():
    # The most to_data adds to a request's own JSON: defaults, nulls, and bare-string
    # evidence made items, EVIDENCE_LIMIT of them.
    text = json.dumps(
        {
            "sourceFunction": "s",
            "targetComponent": "t",
            "problemSummary": "p",
            "attempt": 0,
            "retryPolicy": {"maxRetries": 0, "sleepMinMs": 1, "sleepMaxMs": 1, "sleepStepMs": 0},
            "evidence": [""] * EVIDENCE_LIMIT,
            "playbook": {},
            "deadlineAt": "2026-12-01T10:00Z",
        },
        separators=(",", ":"),
    )
    added = _size(text) - len(text)
    assert 12 * fast_request._SURELY_SMALL + added <= EVENT_DATA_LIMIT


@pytest.mark.parametrize(("path", "at_limit", "past_limit"), LIMITS, ids=[x[0] for x in LIMITS])
def test_limits_are_the_contracts(path: str, at_limit: Any, past_limit: Any):
    assert check(_at(path, at_limit)) is not None
    assert check(_at(path, past_limit)) is None
    assert contract(_at(path, past_limit)) == "invalid"


def test_a_repeated_key_reads_as_the_contract_reads_it():
    # JSON parsers keep the last of a repeated key; the contract sees json.loads' dict.
    text = json.dumps(request(attempt=1))[:-1] + ', "attempt": 7}'
    fast = check(text)
    assert fast is not None
    assert fast.attempt == 7


# -- generated requests ------------------------------------------------------------------

# Lengths and numbers on each side of every limit the contract sets (and some it may
# set one day), so a limit changed on one side only shows.
_LENGTHS = [0, 1, 2, 3, 63, 64, 65, 127, 128, 129, 199, 200, 201, 255, 256, 257]
_LENGTHS += [1999, 2000, 2001, 4095, 4096, 4097, 65_535, 65_536, 65_537]
_AT_LIMITS = st.sampled_from(_LENGTHS).flatmap(
    lambda n: st.sampled_from(["x" * n, "\u00e9" * n, " " * n, ("a/b" + "x" * n)[:n]])
)
_TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", " ", "\n", "\u00a0", "x\n", "a:b", "E28", "ENOSPC"]),
    _AT_LIMITS,
)
_LIMITS = [0, 1, 100, 1000, 100_000, 86_400_000, 604_800_000, 1_000_000_000, 2**63, 2**64]
_NUMBER = st.one_of(
    st.integers(min_value=-2, max_value=110_000),
    st.sampled_from(_LIMITS).flatmap(lambda n: st.sampled_from([n - 1, n, n + 1])),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_SCALAR = st.one_of(st.none(), _TEXT, _NUMBER)
_ANY_JSON = st.recursive(
    _SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3)
)


def _maybe(value: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`value` nine times in ten, else anything: with a dozen fields, about one request
    in four is valid all through and so compared value by value."""
    # Hypothesis leans to the low end of a range, so the low end is the common case.
    return st.integers(1, 10).flatmap(lambda n: other if n == 10 else value)


_WORDS = st.sampled_from(["ENOSPC", "ETIMEDOUT", "OSError", "timed out", "mount", "/mnt/nas"])
_PLAIN_EVIDENCE = st.one_of(
    _maybe(_WORDS, _TEXT),
    st.dictionaries(
        st.sampled_from(EVIDENCE_FIELDS),
        st.one_of(_WORDS, st.none(), st.integers(0, 99_999)),
        max_size=4,
    ),
)
_EVIDENCE_ITEM = _maybe(
    _PLAIN_EVIDENCE,
    st.one_of(
        st.dictionaries(
            st.sampled_from([*EVIDENCE_FIELDS, "event_id", "host"]),
            st.one_of(_SCALAR, _WORDS),
            max_size=4,
        ),
        _SCALAR,
    ),
)
_PLAYBOOK = _maybe(
    st.dictionaries(
        st.sampled_from(["skills", "actions", "links", "runbook"]),
        st.lists(_maybe(_WORDS, _TEXT), max_size=2),
        max_size=3,
    ).map(lambda p: {**p, "runbook": "docs/x.md"} if "runbook" in p else p),
    st.one_of(
        st.dictionaries(
            st.sampled_from(["skills", "actions", "links", "runbook", "extra"]),
            st.one_of(st.lists(_TEXT, max_size=2), _SCALAR),
            max_size=3,
        ),
        _ANY_JSON,
    ),
)


@st.composite
def _policies(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(_maybe(st.integers(1, 1000), _NUMBER))
    gap = draw(st.integers(0, 1000))
    high = low + gap if type(low) is int else draw(_NUMBER)
    return {
        "maxRetries": draw(_maybe(st.integers(0, 100), _NUMBER)),
        "sleepMinMs": low,
        "sleepMaxMs": draw(_maybe(st.just(high), _NUMBER)),
        "sleepStepMs": draw(_maybe(st.integers(0, 100), _NUMBER)),
    }


_POLICY = _policies()
_DEADLINE = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-12-01T10:00:00Z",
            "2026-12-01T10:00Z",
            "2026-12-01T10:00:00.123456789+01:00",
            "2026-12-01 10:00:00-00:30",
            "2026-12-01T10:00:00",
            "2026-12-01",
            "1767000000",
            "2026-13-01T10:00:00Z",
        ]
    ),
    _SCALAR,
)


_ONE_IN_TEN = st.integers(1, 10).map(lambda n: n == 10)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sourceFunction": draw(_maybe(st.sampled_from(["system/backup.redis", "x" * 256]), _TEXT)),
        "targetComponent": draw(_maybe(st.just("redis"), _TEXT)),
        "problemSummary": draw(_maybe(st.sampled_from(["copy failed", "y" * 2000]), _TEXT)),
        "attempt": draw(_maybe(st.sampled_from([0, 5, 1_000_000_000]), _NUMBER)),
        "retryPolicy": draw(_maybe(_POLICY, _ANY_JSON)),
        "evidence": draw(_maybe(st.lists(_EVIDENCE_ITEM, max_size=3), _ANY_JSON)),
        "playbook": draw(_PLAYBOOK),
    }
    optional = {
        "context": _maybe(st.dictionaries(_TEXT, _ANY_JSON, max_size=4), _ANY_JSON),
        "owner": _maybe(st.sampled_from(["ops", "y" * 256]), _TEXT),
        "deadlineAt": _DEADLINE,
        "fallbackAction": st.sampled_from(["escalate", "manual", "page", None]),
        "incidentId": _maybe(st.sampled_from(["bench:1", "a" * 128]), _TEXT | st.just("a" * 129)),
        "domain": _maybe(st.sampled_from(["backup", "worker", "x" * 32]), _TEXT),
        "routeTo": _maybe(
            st.fixed_dictionaries(
                {"event": st.sampled_from(["system/backup.retry.requested", "a/b", "ab"])},
                optional={"data": _maybe(st.dictionaries(_TEXT, _ANY_JSON, max_size=4), _ANY_JSON)},
            ),
            _ANY_JSON,
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        data[key] = draw(optional[key])
    if draw(_ONE_IN_TEN):  # a key the contract reads by name, or not at all
        data[draw(st.sampled_from(["source_function", "unknown", "retry_policy"]))] = draw(_SCALAR)
    if draw(_ONE_IN_TEN):
        del data[draw(st.sampled_from(sorted(data)))]
    return data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_generated_requests_decode_as_the_contract_reads_them(data: dict[str, Any]):
    check(json.dumps(data))


@settings(max_examples=300, deadline=None)
@given(requests())
def test_generated_requests_the_contract_accepts_plainly_take_the_fast_path(
    data: dict[str, Any],
):
    try:
        model = parse_request(data)
    except InvalidRequest:
        return
    extras = model.playbook.model_extra or any(item.model_extra for item in model.evidence)
    if not extras:
        # The contract's own rendering of a request without extras has no snake_case
        # names or odd deadline formats: the fast path must take it.
        plain = json.dumps(model.to_data())
        assert check(plain) is not None, plain


def test_blank_means_the_same_to_str_strip_and_the_fast_path_for_every_code_point():
    # The contract calls text blank when str.strip() leaves nothing; the fast path looks
    # for a character re's \S matches. Surrogates cannot reach either (not Unicode text).
    differ = [
        hex(code)
        for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF
        and (chr(code).strip() == "") != (fast_request._NOT_BLANK.search(chr(code)) is None)
    ]
    assert differ == []
