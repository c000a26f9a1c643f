"""The batch path's helpers: ULIDs as python-ulid makes them, span redaction as redact_text."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from selfheal.bus.keys import Keys
from selfheal.bus.streams import NotUtf8Fields, decode_fields
from selfheal.core.events import ULID_PATTERN
from selfheal.healing.wire import new_ulid
from selfheal.redact import quick_redact_text, redact_text

# Pieces that make each of redact_text's patterns fire, mixed with plain text.
PIECES = [
    "https://user:pw@host/x",
    "/bot123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "1234567:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef_-12",
    "Bearer abc.def",
    "authorization: Basic Zm9v",
    "api_key=s3cr3t",
    "TOKEN: x",
    "password=hunter2",
    "passwd:x",
    "credentials=a",
    "cookie: a=b",
    "secret=1",
    "retry 1 of 5 in 60500 ms: transient_transport (timed out)",
    "backup:redis:nightly",
    "01J0000000000000000000000",
    " ",
    ":",
    "=",
    "api_\u212aey=1",  # the Kelvin sign matches "k" when case is ignored
    "\u017fecret=1",  # and the long s matches "s"
]


def test_new_ulid_is_a_ulid_of_that_millisecond() -> None:
    for now_ms in (0, 1, 1_900_000_000_000, (1 << 48) - 1):
        text = new_ulid(now_ms)
        assert re.fullmatch(ULID_PATTERN, text)
        parsed = ULID.from_str(text)
        assert parsed.milliseconds == now_ms
        assert str(parsed) == text
    assert len({new_ulid(5) for _ in range(1000)}) == 1000
    # The time characters are kept for the last millisecond: switching back and forth
    # must not hand one millisecond's characters to another.
    for now_ms in (5, 6, 5, 1 << 40, 5):
        assert ULID.from_str(new_ulid(now_ms)).milliseconds == now_ms


@given(st.lists(st.sampled_from(PIECES) | st.text(max_size=12), max_size=6))
def test_quick_redact_text_is_redact_text(parts: list[str]) -> None:
    text = "".join(parts)
    assert quick_redact_text(text) == redact_text(text)


def test_quick_redact_text_masks_the_known_secrets() -> None:
    for piece in [*PIECES[:12], *PIECES[-2:]]:
        assert quick_redact_text(piece) == redact_text(piece) != piece


def test_fields_that_are_not_utf8_are_escaped_and_every_field_kept() -> None:
    fields = decode_fields([b"k\xff", b"1", b"k\\xff", b"2", b"data", b"{\xfe}"])
    assert isinstance(fields, NotUtf8Fields)
    assert fields == {"k\\xff": "1", "k\\xff (2)": "2", "data": "{\\xfe}"}
    assert type(decode_fields([b"k", b"v"])) is dict


def test_key_prefixes_the_planner_builds_give_the_keys_names() -> None:
    # The planner builds done markers and completed markers as prefix + id, once per batch.
    keys = Keys("ns")
    for text in ("01KB4Z7XKEYQ8M3V5N6P7R8S9T", "a:b/completed", ""):
        assert keys.done("system/self.healing.router", "") + text == keys.done(
            "system/self.healing.router", text
        )
        assert keys.published("system/x.y", "") + text == keys.published("system/x.y", text)
