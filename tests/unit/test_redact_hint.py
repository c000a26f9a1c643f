"""redact_text's pre-check for the key=value pattern changes no result."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal import redact
from selfheal.redact import redact_text


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
