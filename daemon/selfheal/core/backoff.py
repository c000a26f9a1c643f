"""The retry delay: bounded exponential backoff plus jitter, in whole milliseconds."""

from __future__ import annotations

import math
from typing import Final

from selfheal.core.contracts import SLEEP_LIMIT_MS, RetryPolicy

# sleepMinMs >= 1, so 2**_MAX_EXPONENT already exceeds any allowed sleepMaxMs; capping the
# exponent keeps huge attempt numbers from building huge integers.
_MAX_EXPONENT: Final = SLEEP_LIMIT_MS.bit_length() + 1
_NUMBERS: Final = (int, float)  # a tuple: isinstance on `int | float` builds the union each call


def check_jitter(jitter: float) -> None:
    """Refuse jitter outside [0, 1) (NaN included)."""
    if isinstance(jitter, bool) or not isinstance(jitter, _NUMBERS) or not 0 <= jitter < 1:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")


def retry_delay_ms(attempt: int, policy: RetryPolicy, jitter: float) -> int:
    """min(sleepMaxMs, sleepMinMs * 2**attempt) + floor(jitter * (sleepStepMs + 1)), clamped."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ValueError(f"attempt must be an int >= 0, got {attempt!r}")
    check_jitter(jitter)
    base = min(policy.sleep_max_ms, policy.sleep_min_ms << min(attempt, _MAX_EXPONENT))
    # floor(jitter * (step + 1)) spreads evenly over 0..step; min() guards float rounding.
    spread = min(math.floor(jitter * (policy.sleep_step_ms + 1)), policy.sleep_step_ms)
    # No rounding to minutes here: that erased the jitter in the original (defect 4).
    return max(policy.sleep_min_ms, min(policy.sleep_max_ms, base + spread))
