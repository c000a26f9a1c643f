"""Every retry delay of the daemon: bounded exponential backoff plus jitter.

Three callers, three jitters, one exponential: the router's policy (the original's
sleepMin/Max/Step, in whole milliseconds), the in-copy transfer retries (the
original's "small jitter", a tenth of the base on top) and the HTTP notifiers
(equal jitter, or the server's Retry-After). The waiting itself is tenacity's
(healing/notifiers.py, backup/transfer.py); only the arithmetic lives here.
"""

from __future__ import annotations

import math
from typing import Final

from selfheal.core.contracts import RetryPolicy
from selfheal.core.limits import SLEEP_LIMIT_MS

_NUMBERS: Final = (int, float)  # a tuple: isinstance on `int | float` builds the union each call


def check_jitter(jitter: float) -> None:
    """Refuse jitter outside [0, 1) (NaN included)."""
    if isinstance(jitter, bool) or not isinstance(jitter, _NUMBERS) or not 0 <= jitter < 1:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")


def exponential_ms(base_ms: int, step: int, cap_ms: int) -> int:
    """min(cap, base·2^step) for step >= 0; a huge step does not build a huge integer."""
    # Once 2**step exceeds cap/base the cap wins, so the exponent never needs to pass
    # the cap's bit length (+1 for a base below 1).
    return min(cap_ms, base_ms << min(step, max(cap_ms, SLEEP_LIMIT_MS).bit_length() + 1))


def retry_delay_ms(attempt: int, policy: RetryPolicy, jitter: float) -> int:
    """min(sleepMaxMs, sleepMinMs * 2**attempt) + floor(jitter * (sleepStepMs + 1)), clamped."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
    check_jitter(jitter)
    base = exponential_ms(policy.sleep_min_ms, attempt, policy.sleep_max_ms)
    # floor(jitter * (step + 1)) spreads evenly over 0..step; min() guards float rounding.
    spread = min(math.floor(jitter * (policy.sleep_step_ms + 1)), policy.sleep_step_ms)
    # No rounding to minutes here: that erased the jitter in the original (defect 4).
    return max(policy.sleep_min_ms, min(policy.sleep_max_ms, base + spread))


# The original's "small jitter" of in-copy retries: up to a tenth of the base on top.
COPY_JITTER_FRACTION: Final = 0.1


def copy_retry_delay_s(attempt: int, base_ms: int, max_ms: int, jitter: float) -> float:
    """Delay after failed copy attempt n (1-based): min(base·2^(n-1), max) + jitter·base/10, s."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
    check_jitter(jitter)
    backoff = exponential_ms(base_ms, attempt - 1, max_ms)
    return (backoff + math.floor(jitter * base_ms * COPY_JITTER_FRACTION)) / 1000


def notify_retry_delay_s(
    failures: int,
    base_delay_s: float,
    max_delay_s: float,
    retry_after_s: float | None = None,
    jitter: float = 0.5,
) -> float:
    """Wait after `failures` failed sends: the server's Retry-After when given (capped),
    else equal jitter over min(max, base·2^(failures-1)): half fixed so waits grow, half
    random so notifiers do not retry in step."""
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1:
        raise ValueError(f"failures must be an int >= 1, got {failures!r}")
    check_jitter(jitter)
    if retry_after_s is not None:
        return min(retry_after_s, max_delay_s)
    ceiling_ms = exponential_ms(
        math.ceil(base_delay_s * 1000), failures - 1, math.ceil(max_delay_s * 1000)
    )
    return (ceiling_ms / 2 + jitter * ceiling_ms / 2) / 1000
