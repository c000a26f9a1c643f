"""The flat list of every settable key ("leaf") of the schema, with what docs and loader need."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from selfheal.config.fields import Env, Secret
from selfheal.config.schema import Settings
from selfheal.core.text import unwritable_text
from selfheal.redact import MASK, redact_url, url_secrets

# Settings fields that live in the original's sections rather than under "selfheal".
COMPAT_SECTIONS = ("router", "transport")


@dataclass(frozen=True)
class Leaf:
    """One settable key: where it lives in Settings and in the file, and how it is checked."""

    key: str  # effective dotted key, e.g. "router.maxRetries" or "selfheal.redis.url"
    attrs: tuple[str, ...]  # attribute path on Settings, e.g. ("redis", "url")
    aliases: tuple[str, ...]  # camelCase path, e.g. ("redis", "url")
    info: FieldInfo
    env_vars: tuple[str, ...]
    secret: Secret | None
    kind: type  # the scalar type env values are parsed into (int, float, bool, str)
    adapter: TypeAdapter[Any]

    @property
    def default(self) -> Any:
        """The default in its JSON form (paths unexpanded, models as camelCase objects)."""
        return to_jsonable_python(self.info.get_default(call_default_factory=True), by_alias=True)

    @property
    def description(self) -> str:
        """One-line meaning of the key."""
        return self.info.description or ""


def model_of(annotation: Any) -> type[BaseModel] | None:
    """Return the model class if `annotation` is a (non-optional) nested settings model."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def list_item_model(annotation: Any) -> type[BaseModel] | None:
    """Return the item model of `list[Model]` (or `list[Model] | None`), else None."""
    for arg in _strip_optional(annotation):
        if typing.get_origin(arg) is list:
            return model_of(typing.get_args(arg)[0])
    return None


def _strip_optional(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _scalar_kind(annotation: Any) -> type:
    base = _strip_optional(annotation)[0]
    while typing.get_origin(base) is Annotated:
        base = typing.get_args(base)[0]
    # bool before int: bool is an int subclass but must be parsed as yes/no.
    kinds: tuple[type, ...] = (bool, int, float)
    return next((kind for kind in kinds if base is kind), str if base in (str, Path) else object)


def _adapter(info: FieldInfo) -> TypeAdapter[Any]:
    annotation: Any = info.annotation
    annotated: Any = Annotated[(annotation, *info.metadata)] if info.metadata else annotation
    return TypeAdapter(annotated, config=ConfigDict(strict=True))


def _walk(model: type[BaseModel], attrs: tuple[str, ...], aliases: tuple[str, ...]) -> list[Leaf]:
    leaves: list[Leaf] = []
    for name, info in model.model_fields.items():
        alias = info.alias or name
        nested = model_of(info.annotation)
        if nested is not None:
            leaves.extend(_walk(nested, (*attrs, name), (*aliases, alias)))
            continue
        path = (*aliases, alias)
        prefix = "" if path[0] in COMPAT_SECTIONS else "selfheal."
        env = next((m.names for m in info.metadata if isinstance(m, Env)), ())
        secret = next((m for m in info.metadata if isinstance(m, Secret)), None)
        leaves.append(
            Leaf(
                key=prefix + ".".join(path),
                attrs=(*attrs, name),
                aliases=path,
                info=info,
                env_vars=env,
                secret=secret,
                kind=_scalar_kind(info.annotation),
                adapter=_adapter(info),
            )
        )
    return leaves


LEAVES: tuple[Leaf, ...] = tuple(_walk(Settings, (), ()))
LEAF_BY_KEY: dict[str, Leaf] = {leaf.key: leaf for leaf in LEAVES}


def redact_value(secret: Secret | None, value: Any) -> Any:
    """Hide a secret value (JSON form) as far as its kind requires; None stays None.

    A value that is not secret still has every URL in it shown without its password
    and query values (an endpoint's ?api_key=, a webhook's ?code=).
    """
    if value is None:
        return value
    if secret is None:
        return _redact_urls(value)
    if secret.kind == "url_password" and isinstance(value, str):
        return redact_url(value)
    if secret.kind == "mapping_values" and isinstance(value, dict):
        return {key: MASK for key in value}
    return MASK


def _redact_urls(value: Any) -> Any:
    """`value` with redact_url applied to every string in it that is a URL."""
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    if isinstance(value, list):
        return [_redact_urls(item) for item in value]
    if isinstance(value, dict):
        return {key: _redact_urls(item) for key, item in value.items()}
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    return []


def secret_values(settings: Settings) -> set[str]:
    """Every secret value `settings` holds, for the redactor to mask wherever it appears.

    That is each secret key's value (a header's credential also alone, without its
    scheme), and what redact_value hides of any URL: passwords, query values.
    """
    found: set[str] = set()
    for leaf in LEAVES:
        value = leaf_value(settings, leaf)
        for text in _strings(value):
            found.update(url_secrets(text))
            if leaf.secret is not None and leaf.secret.kind != "url_password":
                found.add(text)
                # "Bearer <token>" also reaches text as the token alone.
                found.add(text.rpartition(" ")[2])
    return found


def show_value(secret: Secret | None, value: Any) -> str:
    """Render a (possibly secret) value for a problem message, shortened."""
    try:
        text = json.dumps(redact_value(secret, value), ensure_ascii=False, default=str)
    except ValueError:  # circular structures cannot come from JSON, but stay total
        text = "<unprintable>"
    if unwritable_text(text) is not None:
        # An env value of bytes that are not UTF-8 (os.environ keeps them as lone
        # surrogates): escaped, so the message can be printed and logged.
        text = json.dumps(redact_value(secret, value), default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def leaf_value(settings: Settings, leaf: Leaf) -> Any:
    """Read a leaf's effective value from settings, in JSON form."""
    value: Any = settings
    for attr in leaf.attrs:
        value = getattr(value, attr)
    return to_jsonable_python(value, by_alias=True)
