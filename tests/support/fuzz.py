"""What every fuzz test shares: its example count (scaled by an env var), its Hypothesis
settings, and a tally of the cases it tried, printed at the end of the run."""

from __future__ import annotations

import os
import time
from typing import Any, Final

from hypothesis import HealthCheck, settings

# A whole number that multiplies every fuzz test's default example count (unset: 1).
SCALE_ENV: Final = "SELFHEAL_FUZZ_EXAMPLES"


def scale() -> int:
    """$SELFHEAL_FUZZ_EXAMPLES as a multiplier; a value that is not a whole number >= 1
    fails loudly rather than running the defaults unnoticed."""
    text = os.environ.get(SCALE_ENV, "").strip()
    if not text:
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{SCALE_ENV} must be a whole number >= 1, got {text!r}")
    return int(text)


def examples(default: int) -> int:
    """A test's example count: its default times the scale."""
    return default * scale()


def fuzz_settings(default: int, **overrides: Any) -> settings:
    """Hypothesis settings for a fuzz test: an explicit example count, no deadline (real
    processes and sockets are involved), no example database written into the tree."""
    options: dict[str, Any] = {
        "max_examples": examples(default),
        "deadline": None,
        "database": None,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.filter_too_much,
        ],
    }
    options.update(overrides)
    return settings(**options)


class Cases:
    """Counts the cases one test tried (Hypothesis examples and fixed ones alike)."""

    def __init__(self) -> None:
        self.count = 0
        self.started = time.monotonic()

    def tried(self, n: int = 1) -> None:
        self.count += n

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
