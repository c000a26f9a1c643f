"""Building blocks of the settings models: the base model, field helpers and value types."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from selfheal.config.fields import Env, Secret

SECRET = Secret("value")
SECRET_URL = Secret("url_password")
SECRET_VALUES = Secret("mapping_values")

ModelId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Token = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Compression = Literal["none", "gzip", "zstd"]


def env(*names: str) -> Env:
    """Declare the environment variables that override a key, first one winning."""
    return Env(names)


def _plain(number: float | None) -> str:
    """Render a bound as written in JSON: 604800000, not 6.048e+08."""
    if number is not None and float(number).is_integer():
        return str(int(number))
    return str(number)


def knob(
    default: Any,
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    alias: str | None = None,
) -> Any:
    """A numeric field whose description ends with its bounds, so the docs match validation."""
    low = f">= {_plain(ge)}" if ge is not None else f"> {_plain(gt)}" if gt is not None else ""
    high = f"<= {_plain(le)}" if le is not None else ""
    bounds = " and ".join(part for part in (low, high) if part)
    return Field(
        default, ge=ge, gt=gt, le=le, alias=alias, description=f"{text} (must be {bounds})."
    )


class ConfigModel(BaseModel):
    """Base of every settings model: frozen, strict, unknown keys refused, camelCase in files."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        validate_default=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
    )
