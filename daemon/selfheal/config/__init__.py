"""Configuration: the schema, the one loader (file + env) and the template."""

from selfheal.config.loader import (
    ConfigItem,
    LoadedConfig,
    default_config_path,
    load_config,
)
from selfheal.config.schema import Settings
from selfheal.config.template import init_config, render_template

__all__ = [
    "ConfigItem",
    "LoadedConfig",
    "Settings",
    "default_config_path",
    "init_config",
    "load_config",
    "render_template",
]
