"""timer_payload writes what the mover script reads, as pydantic's JSON would."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import to_json

from selfheal.bus.streams import timer_payload

# Text as events carry it: any code point but a lone surrogate.
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@given(stream=TEXT, fields=st.dictionaries(TEXT, TEXT, max_size=6))
def test_the_payload_is_the_stream_and_fields_as_json(stream: str, fields: dict[str, str]) -> None:
    payload = timer_payload(stream, fields)
    assert json.loads(payload) == {"stream": stream, "fields": fields}
    assert payload == to_json({"stream": stream, "fields": fields}).decode()
