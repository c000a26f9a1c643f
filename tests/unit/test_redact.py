"""Secrets are masked in mappings, URLs and free text; ordinary data is left alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.redact import MASK, is_secret_key, redact, redact_text

SECRET_CHARS = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=8
)


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "API-KEY",
        "apikey",
        "apiKey",
        "x-typesense-api-key",
        "token",
        "auth_token",
        "TELEGRAM_BOT_TOKEN",
        "botToken",
        "secret",
        "client_secret",
        "password",
        "redisPassword",
        "passwd",
        "Authorization",
        "Proxy-Authorization",
        "cookie",
        "Set-Cookie",
        "credential",
        "credentials",
    ],
)
def test_secret_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["host", "max_tokens", "input_tokens", "tokenizer", "keyspace", "monkey", "stream_key"]
)
def test_ordinary_keys_are_not_secret(key: str) -> None:
    assert not is_secret_key(key)


def test_redact_masks_nested_secret_values_and_keeps_the_rest() -> None:
    original = {
        "redis": {"url": "redis://:hunter2@nas:6379/0", "Password": "hunter2", "db": 0},
        "notify": [{"bot_token": "123456:ABC-xyz", "chat": 42}],
        "typesense": ("x", {"api_key": "ts-key"}),
        "unset_token": None,
    }
    masked = redact(original)
    assert masked == {
        "redis": {"url": f"redis://:{MASK}@nas:6379/0", "Password": MASK, "db": 0},
        "notify": [{"bot_token": MASK, "chat": 42}],
        "typesense": ("x", {"api_key": MASK}),
        "unset_token": None,
    }
    # A deep copy: the caller's structure still holds the real values.
    assert original["redis"]["Password"] == "hunter2"  # type: ignore[index]
    assert masked["notify"] is not original["notify"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://:pw@h", f"redis://:{MASK}@h"),
        ("https://u:pw@h/path", f"https://u:{MASK}@h/path"),
        ("connect to redis://default:s3cr3t@10.0.0.2:6379 failed", None),
        (
            "POST https://api.telegram.org/bot123456:ABC-xyz/sendMessage: 401",
            f"POST https://api.telegram.org/bot{MASK}/sendMessage: 401",
        ),
        ("Authorization: Bearer abc.def-ghi", f"Authorization: Bearer {MASK}"),
        ("header Bearer eyJhbGciOi.x.y sent", f"header Bearer {MASK} sent"),
        (
            "GET /collections?x-typesense-api-key=k3y&q=1",
            f"GET /collections?x-typesense-api-key={MASK}&q=1",
        ),
        ("password=hunter2 user=bob", f"password={MASK} user=bob"),
    ],
)
def test_redact_text_masks_embedded_secrets(text: str, expected: str | None) -> None:
    result = redact_text(text)
    if expected is not None:
        assert result == expected
    for secret in ("pw@", "s3cr3t", "ABC-xyz", "abc.def", "eyJhbGciOi", "k3y", "hunter2"):
        assert secret not in result


@pytest.mark.parametrize(
    "text",
    [
        "https://nas.local:8080/path?email=a@b.c",
        "ssh://backup@nas/volume1",
        "max_tokens=512 elapsed=12:30:01",
        "basic setup complete",
    ],
)
def test_redact_text_leaves_ordinary_text_alone(text: str) -> None:
    assert redact_text(text) == text


@given(user=st.sampled_from(["", "u", "default"]), secret=SECRET_CHARS)
def test_url_passwords_never_survive(user: str, secret: str) -> None:
    text = f"error talking to redis://{user}:{secret}@nas:6379/0"
    result = redact_text(text)
    assert secret not in result
    assert result == f"error talking to redis://{user}:{MASK}@nas:6379/0"


@given(text=st.text(max_size=200))
def test_redact_text_is_idempotent(text: str) -> None:
    once = redact_text(text)
    assert redact_text(once) == once
