"""The retry delay formula: exponential, jittered, clamped, whole milliseconds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.core.backoff import copy_retry_delay_s, notify_retry_delay_s, retry_delay_ms
from selfheal.core.contracts import RetryPolicy

# The original's defaults: 5 min, 4 h, 30 s.
ORIGINAL = RetryPolicy(
    max_retries=5, sleep_min_ms=300_000, sleep_max_ms=14_400_000, sleep_step_ms=30_000
)


@pytest.mark.parametrize(
    ("attempt", "at_zero", "at_top"),
    [
        (0, 300_000, 329_970),
        (1, 600_000, 629_970),
        (2, 1_200_000, 1_229_970),
        (3, 2_400_000, 2_429_970),
        (4, 4_800_000, 4_829_970),
        (5, 9_600_000, 9_629_970),
        (6, 14_400_000, 14_400_000),  # 19.2 M capped at sleepMaxMs, jitter clamped away
    ],
)
def test_original_defaults(attempt: int, at_zero: int, at_top: int) -> None:
    assert retry_delay_ms(attempt, ORIGINAL, 0.0) == at_zero
    assert retry_delay_ms(attempt, ORIGINAL, 0.999) == at_top


def test_jitter_survives_in_whole_milliseconds() -> None:
    # Defect 4: rounding to minutes erased the jitter; 0.5 * 30001 must stay 15000 ms.
    delay = retry_delay_ms(0, ORIGINAL, 0.5)
    assert delay == 315_000
    assert retry_delay_ms(1, ORIGINAL, 0.123_456) == 600_000 + math.floor(0.123_456 * 30_001)
    assert retry_delay_ms(1, ORIGINAL, 0.123_456) % 60_000 != 0


def test_highest_jitter_reaches_the_full_step() -> None:
    policy = RetryPolicy(max_retries=1, sleep_min_ms=10, sleep_max_ms=1_000, sleep_step_ms=5)
    assert retry_delay_ms(0, policy, 0.9999999999999999) == 15
    assert retry_delay_ms(0, policy, 5 / 6) == 15
    assert retry_delay_ms(0, policy, 5 / 6 - 1e-9) == 14


def test_huge_attempts_stay_at_the_cap() -> None:
    assert retry_delay_ms(10**12, ORIGINAL, 0.0) == 14_400_000
    tiny = RetryPolicy(max_retries=1, sleep_min_ms=1, sleep_max_ms=604_800_000, sleep_step_ms=0)
    assert retry_delay_ms(29, tiny, 0.0) == 2**29
    assert retry_delay_ms(30, tiny, 0.0) == 604_800_000
    assert retry_delay_ms(10**18, tiny, 0.0) == 604_800_000


def test_zero_step_means_no_jitter() -> None:
    policy = RetryPolicy(max_retries=1, sleep_min_ms=7, sleep_max_ms=7, sleep_step_ms=0)
    assert {retry_delay_ms(3, policy, j) for j in (0.0, 0.5, 0.999)} == {7}


@pytest.mark.parametrize("jitter", [-0.000_001, 1.0, 1.5, math.nan, math.inf, True])
def test_jitter_outside_unit_interval_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        retry_delay_ms(0, ORIGINAL, jitter)


@pytest.mark.parametrize("attempt", [-1, True, 1.0])
def test_bad_attempt_is_refused(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt"):
        retry_delay_ms(attempt, ORIGINAL, 0.0)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    low = draw(st.integers(1, 604_800_000))
    return RetryPolicy(
        max_retries=draw(st.integers(0, 100)),
        sleep_min_ms=low,
        sleep_max_ms=draw(st.integers(low, 604_800_000)),
        sleep_step_ms=draw(st.integers(0, 86_400_000)),
    )


JITTER = st.floats(0, 1, exclude_max=True)


@given(policies(), st.integers(0, 10**6), JITTER)
def test_delay_is_always_within_bounds(policy: RetryPolicy, attempt: int, jitter: float) -> None:
    delay = retry_delay_ms(attempt, policy, jitter)
    assert isinstance(delay, int)
    assert policy.sleep_min_ms <= delay <= policy.sleep_max_ms


@given(policies(), st.integers(0, 200), JITTER)
def test_delay_never_shrinks_as_attempts_grow(
    policy: RetryPolicy, attempt: int, jitter: float
) -> None:
    assert retry_delay_ms(attempt, policy, jitter) <= retry_delay_ms(attempt + 1, policy, jitter)


@given(policies(), st.integers(0, 200), JITTER)
def test_jitter_adds_at_most_one_step(policy: RetryPolicy, attempt: int, jitter: float) -> None:
    without = retry_delay_ms(attempt, policy, 0.0)
    assert 0 <= retry_delay_ms(attempt, policy, jitter) - without <= policy.sleep_step_ms


def test_copy_retry_delay_formula() -> None:
    assert copy_retry_delay_s(1, 10_000, 120_000, 0.0) == 10.0
    assert copy_retry_delay_s(4, 10_000, 120_000, 0.0) == 80.0
    assert copy_retry_delay_s(5, 10_000, 120_000, 0.0) == 120.0
    assert copy_retry_delay_s(10_000, 10_000, 120_000, 0.999) == 120.999
    assert copy_retry_delay_s(2, 10_000, 120_000, 0.5) == 20.5
    with pytest.raises(ValueError):
        copy_retry_delay_s(0, 10, 20, 0.0)
    with pytest.raises(ValueError):
        copy_retry_delay_s(1, 10, 20, 1.0)


@given(
    attempt=st.integers(1, 10_000),
    base=st.integers(1, 3_600_000),
    extra=st.integers(0, 86_400_000),
    jitter=st.floats(0, 1, exclude_max=True),
)
def test_copy_retry_delay_is_bounded_and_never_shrinks(
    attempt: int, base: int, extra: int, jitter: float
) -> None:
    cap = base + extra
    delay = copy_retry_delay_s(attempt, base, cap, jitter)
    assert base / 1000 <= delay <= (cap + base // 10) / 1000
    assert copy_retry_delay_s(attempt + 1, base, cap, jitter) >= delay


def test_notify_delay_grows_stays_capped_and_honours_retry_after() -> None:
    waits = [notify_retry_delay_s(n, 1.0, 8.0, jitter=0.999) for n in range(1, 7)]
    assert waits == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0], abs=0.01)
    assert notify_retry_delay_s(3, 1.0, 8.0, jitter=0.0) == 2.0  # equal jitter: at least half
    assert notify_retry_delay_s(1, 1.0, 8.0, retry_after_s=5.0) == 5.0
    assert notify_retry_delay_s(1, 1.0, 8.0, retry_after_s=500.0) == 8.0
    for bad in (0, -1, True):
        with pytest.raises(ValueError):
            notify_retry_delay_s(bad, 1.0, 8.0)
    with pytest.raises(ValueError):
        notify_retry_delay_s(1, 1.0, 8.0, jitter=1.0)
