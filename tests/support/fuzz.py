"""What every fuzz test shares: its example count (scaled by an env var), its Hypothesis
settings, the odd texts and JSON values it draws from, and a tally of the cases it
tried, printed at the end of the run."""

from __future__ import annotations

import os
import time
from typing import Any, Final

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# A whole number that multiplies every fuzz test's default example count (unset: 1).
SCALE_ENV: Final = "SELFHEAL_FUZZ_EXAMPLES"


# Text that breaks naive handling: a NUL, a newline, a right-to-left mark, a long
# non-ASCII run, blanks.
ODD_WORDS: Final = ("\x00", "line\nbreak", "\u202e", "é" * 300, "", " ")
# Lone surrogates: valid str, not UTF-8 (JSON carries them escaped; a Redis field cannot).
SURROGATES: Final = ("\ud800", "a\udfffb")


def odd_text(max_size: int, *words: str) -> st.SearchStrategy[str]:
    """Any text up to `max_size`, or one of the odd words (and `words`)."""
    return st.text(max_size=max_size) | st.sampled_from([*ODD_WORDS, *words])


def json_scalars(text: st.SearchStrategy[str], *values: Any) -> st.SearchStrategy[Any]:
    """JSON's scalars: null, booleans, huge integers, finite floats, `text` (and `values`)."""
    found = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | text
    )
    return found | st.sampled_from(values) if values else found


def json_values(
    scalars: st.SearchStrategy[Any],
    keys: st.SearchStrategy[str],
    *,
    max_size: int,
    max_leaves: int,
) -> st.SearchStrategy[Any]:
    """Nested JSON: lists and objects (keyed by `keys`) around `scalars`."""
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=max_size) | st.dictionaries(keys, inner, max_size=max_size)
        ),
        max_leaves=max_leaves,
    )


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
