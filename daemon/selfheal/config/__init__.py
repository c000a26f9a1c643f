"""Configuration: the schema, the one loader (file + env) and the template.

The names below are loaded on first use, so importing a light part of the package
(`selfheal.config.locate`, which the CLI needs to find the daemon) does not build the
schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfheal.config.loader import (
        ConfigItem,
        LoadedConfig,
        load_config,
    )
    from selfheal.config.locate import default_config_path
    from selfheal.config.schema import Settings
    from selfheal.config.template import init_config, render_template

_HOMES = {
    "ConfigItem": "selfheal.config.loader",
    "LoadedConfig": "selfheal.config.loader",
    "load_config": "selfheal.config.loader",
    "default_config_path": "selfheal.config.locate",
    "Settings": "selfheal.config.schema",
    "init_config": "selfheal.config.template",
    "render_template": "selfheal.config.template",
}

__all__ = [
    "ConfigItem",
    "LoadedConfig",
    "Settings",
    "default_config_path",
    "init_config",
    "load_config",
    "render_template",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
