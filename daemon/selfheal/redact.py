"""Mask secrets in values and text before they reach logs, status, telemetry or errors."""

from __future__ import annotations

import copy
import functools
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote_plus

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
@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """Return True when a mapping key names a secret (api_key, botToken, Authorization...)."""
    return bool(_SECRET_KEY.search(_CAMEL_BOUNDARY.sub("_", name)))


def _mask_auth_header(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme} {MASK}" if scheme else f"{match.group(1)}{MASK}"


# -- secrets known by value ---------------------------------------------------------------
# The patterns above find secrets by their shape. A configured secret can have any shape
# (a webhook's ?code=, a password, an API key), so the configured values themselves are
# registered here and masked wherever redaction runs: logs, spans, status, errors.
MIN_KNOWN_SECRET = 6
"""Shorter values are not registered: they would mask ordinary words all over the log."""


@dataclass(frozen=True)
class _KnownSecrets:
    values: frozenset[str]
    # Every value, longest first: a value that holds another is masked whole.
    pattern: re.Pattern[str] | None
    generation: int  # never repeats: the key of results remembered under this set


_generations = itertools.count(1)
_known = _KnownSecrets(frozenset(), None, 0)


def _forms(value: str) -> set[str]:
    """The value as configured and as it reads once percent-encoded into a URL."""
    return {value, quote(value, safe=""), quote(value, safe="/:@")}


def register_secrets(values: Iterable[str | None]) -> None:
    """Mask these literal values wherever redact_text runs, from now on.

    Registered values are never forgotten: after a reload drops a secret, work begun
    under the old config still holds it, and a rotated-out key may still be valid.
    One reference is swapped, so threads that redact meanwhile see the old set or the
    new one, never a mix.
    """
    global _known
    new = {
        form
        for value in values
        if value and len(value) >= MIN_KNOWN_SECRET and MASK not in value
        for form in _forms(value)
    }
    if new <= _known.values:
        return
    merged = _known.values | new
    ordered = sorted(merged, key=lambda value: (-len(value), value))
    _known = _KnownSecrets(
        merged,
        re.compile("|".join(map(re.escape, ordered))),
        next(_generations),
    )
    _quick_redact_cached.cache_clear()  # only frees room: the old results are unreachable


def registered_secrets() -> frozenset[str]:
    """The literal values redact_text masks (with their URL-encoded forms)."""
    return _known.values


def redact_text(text: str) -> str:
    """Return free text (an error message, a URL) with embedded secrets masked."""
    known = _known.pattern
    if known is not None:
        # First: a pattern masking part of a registered value would leave the rest visible.
        text = known.sub(MASK, text)
    text = _URL_USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _TELEGRAM_PATH.sub(f"/bot{MASK}", text)
    text = _TELEGRAM_BARE.sub(MASK, text)
    text = _BEARER.sub(rf"\1 {MASK}", text)
    text = _AUTH_HEADER.sub(_mask_auth_header, text)
    if not _KEY_VALUE_HINT.search(text):
        return text  # no secret word before a separator: _KEY_VALUE cannot match
    return _KEY_VALUE.sub(rf"\1{MASK}", text)


@dataclass(frozen=True)
class _UrlParts:
    scheme: str
    userinfo: str | None  # None: no '@' in the authority
    hosts: str
    path: str
    query: str | None  # None: no '?'
    fragment: str | None  # None: no '#'


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _split_url(url: str) -> _UrlParts | None:
    """scheme://[userinfo@]hosts[/path][?query][#fragment], or None for anything else.

    Hand-made rather than urlsplit: a password may hold '@', ':' or '#' unencoded, and
    Redis URLs list several hosts (redis://:pw@h1:1,h2:2).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    # The authority ends at the first '/', '?' or '#' after the last '@' of the userinfo.
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark, rest.rfind("@") + 1)
        if found != -1:
            cut = min(cut, found)
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, hosts = authority.rpartition("@")
    tail, hash_mark, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    return _UrlParts(
        scheme,
        userinfo if at else None,
        hosts,
        path,
        query if question else None,
        fragment if hash_mark else None,
    )


def _query_fields(query: str) -> list[tuple[str, str]]:
    """(name and '=', value) per '&'-separated field; a bare field is all value."""
    fields: list[tuple[str, str]] = []
    for field in query.split("&"):
        name, equals, value = field.partition("=")
        fields.append((name + equals, value) if equals else ("", field))
    return fields


def redact_url(url: str) -> str:
    """A URL with its password (or lone userinfo) and every query and fragment value masked.

    Scheme, user name, hosts, path and query names stay: they say where a setting
    points without saying how it gets in. Text that is not a URL gets redact_text.
    """
    parts = _split_url(url)
    if parts is None:
        return redact_text(url)
    out = f"{parts.scheme}://"
    if parts.userinfo is not None:
        user, colon, _password = parts.userinfo.partition(":")
        # A lone userinfo may be a token (https://TOKEN@host) or a password-only form.
        out += f"{user}:{MASK}@" if colon else f"{MASK}@"
    out += parts.hosts + redact_text(parts.path)
    if parts.query is not None:
        fields = _query_fields(parts.query)
        out += "?" + "&".join(name + (MASK if value else "") for name, value in fields)
    if parts.fragment is not None:
        out += "#" + (MASK if parts.fragment else "")
    return out


def url_secrets(url: str) -> set[str]:
    """What redact_url masks in `url`, each as written and decoded (to register them)."""
    parts = _split_url(url)
    if parts is None:
        return set()
    found: set[str] = set()
    if parts.userinfo is not None:
        user, colon, password = parts.userinfo.partition(":")
        found.add(password if colon else user)
    if parts.query is not None:
        found.update(value for _name, value in _query_fields(parts.query) if value)
    if parts.fragment:
        found.add(parts.fragment)
    return found | {unquote_plus(value) for value in found}


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
_MAY_HOLD_SECRET = re.compile(_SECRET_HINTS, re.IGNORECASE)
# For ASCII text, lower() then a case-sensitive search is the same test, three times faster.
_MAY_HOLD_SECRET_LOWER = re.compile(_SECRET_HINTS)


def may_hold_secret(text: str) -> bool:
    """False when redact_text would certainly return `text` unchanged.

    Every test here looks for a substring, so texts joined by newlines may be asked
    at once: what one of them holds, the joined text holds too.
    """
    if text.isascii():
        hint = _MAY_HOLD_SECRET_LOWER.search(text.lower())
    else:
        hint = _MAY_HOLD_SECRET.search(text)
    known = _known.pattern
    return hint is not None or (known is not None and known.search(text) is not None)


def quick_redact_text(text: str) -> str:
    """redact_text, skipped for text none of its patterns can match."""
    return redact_text(text) if may_hold_secret(text) else text


@functools.lru_cache(maxsize=1024)
def _quick_redact_cached(text: str, generation: int) -> str:
    return quick_redact_text(text)


def cached_quick_redact_text(text: str) -> str:
    """quick_redact_text, remembered: span attribute values repeat from span to span.

    Results are remembered per set of registered secrets, so a result computed while
    another thread registers a secret is never served once it is registered.
    """
    return _quick_redact_cached(text, _known.generation)
