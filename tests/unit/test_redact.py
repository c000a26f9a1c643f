"""Secrets are masked in mappings, URLs and free text; ordinary data is left alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfheal.redact import (
    MASK,
    cached_quick_redact_text,
    is_secret_key,
    quick_redact_text,
    redact,
    redact_text,
    redact_url,
    register_secrets,
    registered_secrets,
    url_secrets,
)

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


# -- URLs: password, query and fragment values ------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://llm.example/v1?api_key=K1&model=m#frag",
            f"https://llm.example/v1?api_key={MASK}&model={MASK}#{MASK}",
        ),
        ("redis://user:p@ss:w0rd@h1:1,h2:2/0", f"redis://user:{MASK}@h1:1,h2:2/0"),
        ("https://TOKEN123@git.example/x", f"https://{MASK}@git.example/x"),
        ("https://h/p?bare&empty=&=v", f"https://h/p?{MASK}&empty=&={MASK}"),
        ("https://api.telegram.org/bot123:abc/send", f"https://api.telegram.org/bot{MASK}/send"),
        ("http://localhost:8108", "http://localhost:8108"),
        ("embedded", "embedded"),
        ("not a url password=x", f"not a url password={MASK}"),
    ],
)
def test_redact_url_keeps_where_and_hides_how(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_url_secrets_are_what_redact_url_hides_as_written_and_decoded() -> None:
    url = "https://me:pw%40x@h/p?code=a%2Bb&n=1#frag"
    assert url_secrets(url) == {"pw%40x", "pw@x", "a%2Bb", "a+b", "1", "frag"}
    assert url_secrets("https://TOKEN123@h/") == {"TOKEN123"}
    assert url_secrets("https://h/p") == set()
    assert url_secrets("/var/run/x.sock") == set()


# -- secrets known by value (the configured ones) ---------------------------------------
# tests/conftest.py restores the registry after each test.


def test_registered_values_are_masked_wherever_they_appear() -> None:
    register_secrets(["Zq9-webhook-code", "short", None, ""])
    text = 'POST https://h/hook?code=Zq9-webhook-code "HTTP/1.1 204"; again: Zq9-webhook-code!'
    assert redact_text(text) == f'POST https://h/hook?code={MASK} "HTTP/1.1 204"; again: {MASK}!'
    assert quick_redact_text("sig Zq9-webhook-code") == f"sig {MASK}"
    # Too short to mask without hiding ordinary words; such values rely on the patterns.
    assert redact_text("short and sweet") == "short and sweet"
    assert "short" not in registered_secrets()


def test_the_longest_value_and_encoded_forms_are_masked_whole() -> None:
    register_secrets(["abc/def", "abc/def+gh1"])
    assert redact_text("x abc/def+gh1 y abc%2Fdef%2Bgh1 z abc/def") == f"x {MASK} y {MASK} z {MASK}"


def test_values_are_masked_before_the_patterns_could_split_them() -> None:
    register_secrets(["hunter two 2"])
    assert redact_text("password=hunter two 2 end") == f"password={MASK} end"


def test_values_accumulate_and_the_span_cache_forgets_stale_results() -> None:
    text = "seen Kx81-first and Kx82-second"
    assert cached_quick_redact_text(text) == text  # cached before either is known
    register_secrets(["Kx81-first"])
    register_secrets(["Kx82-second"])
    assert cached_quick_redact_text(text) == f"seen {MASK} and {MASK}"


def test_values_holding_the_mask_are_not_registered() -> None:
    register_secrets([f"pre{MASK}post"])
    assert registered_secrets() == frozenset()


KNOWN = ["Tok3n-Alpha", "p@ss w0rd", "ümlaut-key", "QQQQQQ"]


@given(st.lists(st.sampled_from([*KNOWN, "tok3n-alpha", " ", "=", "x"]) | st.text(max_size=10)))
def test_quick_paths_agree_with_redact_text_for_registered_values(parts: list[str]) -> None:
    register_secrets(KNOWN)
    for text in ["".join(parts), *parts]:
        assert quick_redact_text(text) == redact_text(text)
        for secret in KNOWN:
            assert secret not in redact_text(text)
