"""Comparing decoded values strictly: types, order and model internals included."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def typed(value: Any) -> Any:
    """A comparable picture of a value that also tells 1, 1.0 and True (and -0.0 and 0.0)
    apart, keeps dict order, and looks into models: their fields, fields set, extras and
    private attributes."""
    if isinstance(value, BaseModel):
        return (
            type(value),
            typed(value.__dict__),
            sorted(value.model_fields_set),
            typed(value.__pydantic_extra__),
            value.__pydantic_private__,
        )
    if type(value) is dict:
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if type(value) is list:
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, repr(value))
