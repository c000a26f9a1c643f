"""Mask secrets in values and text before they reach logs, status, telemetry or errors."""

from __future__ import annotations

import bisect
import copy
import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

MASK = "***"

# Secret words; matched against whole key segments so "max_tokens" stays visible
# (a token *count*) while "bot_token", "x-api-key" and "redisPassword" are masked.
_SECRET_WORDS = (
    r"api[-_]?key|access[-_]?key|private[-_]?key|bot[-_]?token|token|secrets?"
    r"|passwords?|passwd|authorization|cookies?|credentials?"
)
_SECRET_KEY = re.compile(rf"(?:^|[-_.\s])(?:{_SECRET_WORDS})(?:$|[-_.\s])", re.IGNORECASE)
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

# scheme://user:password@host; '/' ends the password so "host:8080/path@x" is untouched.
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s]*):(?P<pw>[^@/\s]+)@")
# Telegram Bot API paths embed the token: https://api.telegram.org/bot<id>:<secret>/...
_TELEGRAM_PATH = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")
# A bare Telegram token pasted into an error message.
_TELEGRAM_BARE = re.compile(r"\b\d{6,12}:[A-Za-z0-9_-]{30,}")
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Authorization: <scheme> <credentials> -- keep the scheme, hide the credentials.
_AUTH_HEADER = re.compile(
    r"\b((?:proxy-)?authorization[\"']?\s*[=:]\s*[\"']?)(?:(\w+)\s+)?[^\s\"'&,;]+",
    re.IGNORECASE,
)
# key=value / key: value in query strings, env dumps and error text.
_KEY_VALUE = re.compile(
    r"([\w.-]*?(?:api[-_]?key|access[-_]?key|private[-_]?key|token|secret|password|passwd"
    r"|credentials?|cookie)[\"']?\s*[=:]\s*[\"']?)(?!\*\*\*)[^\s\"'&,;]+",
    re.IGNORECASE,
)
# Every _KEY_VALUE match holds a secret word right before its separator. The lazy prefix
# makes _KEY_VALUE try every start in a run of word characters (tens of microseconds on a
# bare ULID), so this one-pass search decides first whether it can match at all.
_KEY_VALUE_HINT = re.compile(
    r"(?:api[-_]?key|access[-_]?key|private[-_]?key|token|secret|password|passwd"
    r"|credentials?|cookie)[\"']?\s*[=:]",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=1024)  # config, span and header names repeat
def is_secret_key(name: str) -> bool:
    """Return True when a mapping key names a secret (api_key, botToken, Authorization...)."""
    return bool(_SECRET_KEY.search(_CAMEL_BOUNDARY.sub("_", name)))


def _mask_auth_header(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme} {MASK}" if scheme else f"{match.group(1)}{MASK}"


def redact_text(text: str) -> str:
    """Return free text (an error message, a URL) with embedded secrets masked."""
    text = _URL_USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _TELEGRAM_PATH.sub(f"/bot{MASK}", text)
    text = _TELEGRAM_BARE.sub(MASK, text)
    text = _BEARER.sub(rf"\1 {MASK}", text)
    text = _AUTH_HEADER.sub(_mask_auth_header, text)
    if not _KEY_VALUE_HINT.search(text):
        return text  # no secret word before a separator: _KEY_VALUE cannot match
    return _KEY_VALUE.sub(rf"\1{MASK}", text)


def _mask_secret_value(value: Any) -> Any:
    # None and "" are kept: "not configured" is useful to see and reveals nothing.
    if value is None or value == "":
        return value
    return MASK


def redact(value: Any) -> Any:
    """Return a deep copy of `value` with secret-named entries and secrets in strings masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: (
                _mask_secret_value(item)
                if isinstance(key, str) and is_secret_key(key)
                else redact(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    if isinstance(value, set | frozenset):
        return type(value)(redact(item) for item in value)
    if isinstance(value, int | float | bool | bytes) or value is None:
        return value
    # Unknown objects are copied untouched; callers pass model_dump() output to get masking.
    return copy.deepcopy(value)


# redact_text runs six patterns, one of which backtracks at every position (tens of
# microseconds per short string). Each pattern needs one of these literals to match at
# all, so text holding none of them comes back unchanged and skips the patterns.
# Text holding none of these (in any case) has nothing any text pattern below could mask.
_HINT_WORDS: Final = (
    "://", "/bot", "bearer", "authorization", "key", "token", "secret", "passw",
    "credential", "cookie",
)  # fmt: skip
_SECRET_HINTS = "|".join(map(re.escape, _HINT_WORDS)) + r"|\d:"
# The last hint, a digit and a colon, found by its colon: re then skips to each colon.
_DIGIT_COLON = re.compile(r":(?<=[0-9]:)")
_MAY_HOLD_SECRET = re.compile(_SECRET_HINTS, re.IGNORECASE)
# For ASCII text, lower() then a case-sensitive search is the same test, three times faster.
_MAY_HOLD_SECRET_LOWER = re.compile(_SECRET_HINTS)


def quick_redact_text(text: str) -> str:
    """redact_text, skipped for text none of its patterns can match."""
    if text.isascii():
        hint = _MAY_HOLD_SECRET_LOWER.search(text.lower())
    else:
        hint = _MAY_HOLD_SECRET.search(text)
    return redact_text(text) if hint else text


def texts_to_redact(texts: Iterable[str]) -> set[str]:
    """Those of `texts` that quick_redact_text may change; it returns the others as they are.

    One search over the ASCII texts joined by newlines instead of one per text: no
    hint holds a newline, so every match lies inside one text.
    """
    suspects: set[str] = set()
    ascii_texts: list[str] = []
    for text in dict.fromkeys(texts):  # a batch repeats its actions, classes and routes
        if text.isascii():
            ascii_texts.append(text)
        elif _MAY_HOLD_SECRET.search(text):
            suspects.add(text)
    if not ascii_texts:
        return suspects
    lowered = "\n".join(ascii_texts).lower()
    hits = [match.start() for match in _DIGIT_COLON.finditer(lowered)]
    for word in _HINT_WORDS:  # str.find is many times quicker than re on an alternation
        at = lowered.find(word)
        while at >= 0:
            hits.append(at)
            at = lowered.find(word, at + 1)
    if hits:
        starts = list(itertools.accumulate((len(text) + 1 for text in ascii_texts), initial=0))
        suspects.update(ascii_texts[bisect.bisect_right(starts, at) - 1] for at in hits)
    return suspects
