"""redact_text's pre-check for the key=value pattern changes no result."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan

from selfheal import redact
from selfheal.redact import redact_text
from selfheal.telemetry import redacted_span


def _unguarded(text: str) -> str:
    """redact_text as it was: every pattern, always."""
    text = redact._URL_USERINFO.sub(rf"\g<head>:{redact.MASK}@", text)
    text = redact._TELEGRAM_PATH.sub(f"/bot{redact.MASK}", text)
    text = redact._TELEGRAM_BARE.sub(redact.MASK, text)
    text = redact._BEARER.sub(rf"\1 {redact.MASK}", text)
    text = redact._AUTH_HEADER.sub(redact._mask_auth_header, text)
    return redact._KEY_VALUE.sub(rf"\1{redact.MASK}", text)


@pytest.mark.parametrize(
    "text",
    [
        "01KB4Z7XKEYQ8M3V5N6P7R8S9T",
        "api_key=abc",
        "X-Api-Key: 'abc'",
        "tokenCount=5",
        "max_tokens = 12",
        'password"=x',
        "secret :\n value",
        "token=***",
        "cookie;=x",
        "Credentials:\tabc def",
        "no secrets here",
        "ṫoken=x",
        "TOKEN=x&next=1",
        "",
    ],
)
def test_same_as_unguarded(text: str) -> None:
    assert redact_text(text) == _unguarded(text)


PIECES = st.sampled_from(
    ["api", "key", "_", "-", ".", "token", "secret", "passwd", "password", "cookie",
     "credentials", "=", ":", "'", '"', " ", "\t", "***", "&", ",", ";", "x", "A9", "ß",
     "Bearer ", "authorization", "://", "@", "/bot123:", "TOKEN", "Key"]
)  # fmt: skip


@given(st.lists(PIECES, max_size=12).map("".join) | st.text(max_size=40))
def test_same_as_unguarded_on_generated_text(text: str) -> None:
    assert redact_text(text) == _unguarded(text)


@given(
    st.dictionaries(
        st.sampled_from(["selfheal.reason", "selfheal.api_key", "detail", "x.token", "n"]),
        st.lists(PIECES, max_size=8).map("".join) | st.text(max_size=30) | st.integers(),
        max_size=5,
    )
)
def test_a_span_passed_through_unredacted_had_nothing_to_mask(
    attributes: dict[str, object],
) -> None:
    """The span fast path (the span itself when nothing could need masking) skips a
    span only when masking every attribute would have changed nothing."""
    span = ReadableSpan("s", attributes=attributes)  # type: ignore[arg-type]
    redact.register_secrets(["correct-horse-battery"])
    passed = redacted_span(span)
    masked = {
        k: redact.redact({k: v})[k] if redact.is_secret_key(k) else v for k, v in attributes.items()
    }
    masked = {k: redact_text(v) if isinstance(v, str) else v for k, v in masked.items()}
    if passed is span:
        assert masked == attributes
    else:
        assert dict(passed.attributes or {}) == masked


def test_a_registered_secret_in_any_attribute_is_masked() -> None:
    redact.register_secrets(["correct-horse-battery"])
    span = ReadableSpan("s", attributes={"selfheal.reason": "login correct-horse-battery ok"})
    passed = redacted_span(span)
    assert passed is not span
    assert "correct-horse-battery" not in str(dict(passed.attributes or {}))
